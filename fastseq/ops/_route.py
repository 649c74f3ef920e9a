"""Which path an op call takes: the torch.library custom ops or fastseq._C directly."""
import torch
from torch import Tensor


def use_custom_op(t: Tensor) -> bool:
    """torch.compile traces the custom ops, and meta tensors (shape inference, `device="meta"`
    modules) need their fake kernels; every other eager call goes straight to fastseq._C
    through a plain autograd.Function, which costs a fraction of a custom op's dispatch (this
    matters for cells called step by step from Python)."""
    return torch.compiler.is_compiling() or t.device.type == "meta"
