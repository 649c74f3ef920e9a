"""Autograd-aware fused ops: one torch.library custom op (with a fake kernel, for
torch.compile) and one autograd formula per C++ entry point in fastseq._C."""
from ._attention_settings import attention_settings  # noqa: F401
