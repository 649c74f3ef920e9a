"""torch.autocast for fastseq's ops: each op computes in the dtype torch's own module or
function computes in under the same autocast, and its kernels never see autocast.

The policy, per device type (tests/test_safety.py checks every entry against torch):
  CPU (torch 2.13, measured): nn.LSTM, nn.RNN, nn.RNNCell and scaled_dot_product_attention
  run in the autocast dtype (bfloat16 or float16); nn.GRU, nn.LSTMCell and nn.GRUCell run
  in float32, as their torch counterparts do.
  CUDA (autocast's CUDA op lists: the cells, cuDNN's RNN and scaled_dot_product_attention
  are lower-precision ops): everything runs in the autocast dtype.
Where the fused kernels lack the autocast dtype on a device (float16 on CPU for the
recurrent ops) the op computes in float32 and returns its outputs in the autocast dtype.
"""
import functools
from typing import Optional

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

_LOWER_PRECISION_OPS = {
    "cpu": frozenset({"lstm", "rnn", "rnn_cell", "attention"}),
    "cuda": frozenset({"lstm", "gru", "rnn", "lstm_cell", "gru_cell", "rnn_cell", "attention"}),
}
OPS = ("lstm", "gru", "rnn", "lstm_cell", "gru_cell", "rnn_cell", "attention")

# dtypes the kernels compute in, per device type (fastseq._C's dtype checks).
_KERNEL_DTYPES = {
    "cpu": {"attention": (torch.float32, torch.float64, torch.bfloat16, torch.float16)},
    "cuda": {},
}
_DEFAULT_KERNEL_DTYPES = {"cpu": (torch.float32, torch.float64, torch.bfloat16),
                          "cuda": (torch.float32, torch.float64, torch.bfloat16, torch.float16)}


def compute_dtypes(op: str, device_type: str, autocast_dtype: torch.dtype):
    """(dtype the kernels run in, dtype of the outputs) for `op` under autocast."""
    lower = op in _LOWER_PRECISION_OPS.get(device_type, ())
    out_dtype = autocast_dtype if lower else torch.float32
    supported = _KERNEL_DTYPES.get(device_type, {}).get(
        op, _DEFAULT_KERNEL_DTYPES.get(device_type, ()))
    return (out_dtype if out_dtype in supported else torch.float32), out_dtype


def _device_type(args) -> Optional[str]:
    """Device type of the first tensor among args' leaves (torch's pytree: tuples, lists,
    dicts, namedtuples such as PackedSequence)."""
    for leaf in pytree.tree_leaves(args):
        if isinstance(leaf, Tensor):
            return leaf.device.type
    return None


def _cast(value, dtype):
    """Floating tensors among value's leaves (so keyword arguments and PackedSequence data
    are cast like positional tensors) to dtype; everything else as it is."""
    return pytree.tree_map_only(
        Tensor, lambda t: t.to(dtype) if t.is_floating_point() and t.dtype != dtype else t, value)


def autocast_as(op: str):
    """Decorator for an op's public entry point: under an active autocast, floating tensor
    arguments are cast to the dtype of compute_dtypes(op, ...) and the op runs with autocast
    off (its GEMMs must not be retyped behind the kernels' back); outputs come back in the
    dtype torch's own op returns. Without autocast it costs one C call."""
    assert op in OPS, op

    def decorate(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            if not torch._C._is_any_autocast_enabled():
                return fn(*args, **kwargs)
            device_type = _device_type(args) or _device_type(kwargs)
            if device_type is None or not torch.is_autocast_enabled(device_type):
                return fn(*args, **kwargs)
            run_dtype, out_dtype = compute_dtypes(op, device_type,
                                                  torch.get_autocast_dtype(device_type))
            with torch.autocast(device_type, enabled=False):
                result = fn(*_cast(args, run_dtype), **_cast(kwargs, run_dtype))
                return result if run_dtype == out_dtype else _cast(result, out_dtype)
        return run
    return decorate


def register_custom_op_autocast(op_name: str, op: str) -> None:
    """The same policy for a torch.library custom op called directly under autocast (with
    the default autocast dtype of each device: bfloat16 on CPU, float16 on CUDA)."""
    for device_type, default in (("cpu", torch.bfloat16), ("cuda", torch.float16)):
        run_dtype, _ = compute_dtypes(op, device_type, default)
        torch.library.register_autocast(op_name, device_type, run_dtype)
