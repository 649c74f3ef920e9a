"""Drop-in replacement for torch.nn.functional: everything re-exported, the fused ops
overridden below."""
from torch.nn.functional import *  # noqa: F401,F403
import torch.nn.functional as _F

# torch.nn.functional's star-export omits some public helpers; copy every public name.
globals().update({k: v for k, v in vars(_F).items() if not k.startswith("_") and k not in globals()})

# ---- fused attention ----
