"""Drop-in replacement for torch.nn.functional: everything re-exported, the fused ops
overridden below."""
from torch.nn.functional import *  # noqa: F401,F403
import torch.nn.functional as _F

# torch.nn.functional's star-export omits some public helpers; copy every public name.
globals().update({k: v for k, v in vars(_F).items() if not k.startswith("_") and k not in globals()})

# ---- fused attention ----
from ..ops.attention import (  # noqa: E402,F401
    scaled_dot_product_attention, scaled_dot_product_attention_with_weights)
