"""Drop-in replacement for torch.nn: ``import fastseq.nn as nn``.

Everything in torch.nn is re-exported unchanged; the layers fastseq accelerates are
replaced below by versions with the same constructor, parameters and state_dict.
"""
import sys as _sys

import torch.nn as _tnn
from torch.nn import *  # noqa: F401,F403
from torch.nn import init, utils, parameter, modules, Parameter, Module  # noqa: F401

# `from . import functional` would keep torch.nn.functional, which the star-import above
# already bound to this name; import_module loads fastseq.nn.functional itself.
from importlib import import_module as _import_module

functional = _import_module(__name__ + ".functional")

# `import fastseq.nn.init` / `fastseq.nn.utils.rnn` behave as their torch.nn twins.
for _name in ("init", "utils", "parameter", "modules"):
    _sys.modules[__name__ + "." + _name] = getattr(_tnn, _name)
_sys.modules[__name__ + ".utils.rnn"] = _tnn.utils.rnn

# ---- fused recurrent layers ----
from .lstm import LSTM, LSTMCell  # noqa: E402,F401
from .gru_rnn import GRU, RNN, GRUCell, RNNCell  # noqa: E402,F401

# ---- fused attention and transformer layers ----
from .attention import MultiheadAttention  # noqa: E402,F401
from .transformer import (  # noqa: E402,F401
    Transformer, TransformerDecoder, TransformerDecoderLayer, TransformerEncoder,
    TransformerEncoderLayer)

# ---- torch's tools see each fused layer as its torch base class (see _interop) ----
from . import _interop  # noqa: E402

_interop.register([LSTM, LSTMCell, GRU, RNN, GRUCell, RNNCell, MultiheadAttention, Transformer,
                   TransformerDecoder, TransformerDecoderLayer, TransformerEncoder,
                   TransformerEncoderLayer])

# ---- attention over feature maps (not in torch.nn) ----
from .conv_attention import SelfAttention2d  # noqa: E402,F401
