"""Drop-in replacement for torch.nn.functional: everything re-exported, the fused ops
overridden below."""
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.nn.functional import *  # noqa: F401,F403
import torch.nn.functional as _F

# torch.nn.functional's star-export omits some public helpers; copy every public name.
globals().update({k: v for k, v in vars(_F).items() if not k.startswith("_") and k not in globals()})

# ---- fused attention ----
from ..ops import attention as _ops  # noqa: E402
from ..ops.reference_attention import math_attention as _math_attention  # noqa: E402
from ._interop import use_torch_forward  # noqa: E402


# The fused path is Python around C++ calls that TorchScript cannot compile; marked unused,
# it is left out of scripted code, which takes the torch branch below instead.
@torch.jit.unused
def _fused(query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor], dropout_p: float,
           is_causal: bool, scale: Optional[float], enable_gqa: bool) -> Tensor:
    return _ops.scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal,
                                             scale, enable_gqa)


@torch.jit.unused
def _fused_with_weights(query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor],
                        dropout_p: float, is_causal: bool, scale: Optional[float],
                        enable_gqa: bool) -> Tuple[Tensor, Tensor]:
    return _ops.scaled_dot_product_attention_with_weights(query, key, value, attn_mask, dropout_p,
                                                          is_causal, scale, enable_gqa)


@torch.jit.unused
def _torch_path() -> bool:
    return use_torch_forward()


def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor,
                                 attn_mask: Optional[Tensor] = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: Optional[float] = None,
                                 enable_gqa: bool = False) -> Tensor:
    if torch.jit.is_scripting():
        return _F.scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal,
                                               scale=scale, enable_gqa=enable_gqa)
    if _torch_path():
        return _F.scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal,
                                               scale=scale, enable_gqa=enable_gqa)
    return _fused(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)


def scaled_dot_product_attention_with_weights(
        query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor] = None,
        dropout_p: float = 0.0, is_causal: bool = False, scale: Optional[float] = None,
        enable_gqa: bool = False) -> Tuple[Tensor, Tensor]:
    if torch.jit.is_scripting():
        return _math_attention(query, key, value, attn_mask, dropout_p, is_causal, scale,
                               enable_gqa)
    if _torch_path():
        return _math_attention(query, key, value, attn_mask, dropout_p, is_causal, scale,
                               enable_gqa)
    return _fused_with_weights(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)


scaled_dot_product_attention.__doc__ = _ops.scaled_dot_product_attention.__doc__ + """
    Under ONNX export, torch.jit.trace and torch.func transforms (grad, jacrev, vmap, ...),
    and in TorchScript, this calls torch.nn.functional.scaled_dot_product_attention with the
    same arguments (fastseq.nn._interop, docs/interop.md): the fused kernel is C++ that those
    tools cannot see into; torch's exports as ONNX MatMul/Softmax and composes with torch.func.
"""
scaled_dot_product_attention_with_weights.__doc__ = (
    _ops.scaled_dot_product_attention_with_weights.__doc__ + """
    Under ONNX export, tracing, torch.func transforms and in TorchScript this computes the
    same pair in plain torch ops (matmul, softmax, masked_fill, dropout).
""")
