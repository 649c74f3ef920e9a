"""Drop-in replacement for torch.nn.functional: everything re-exported, the fused ops
overridden below."""
import math
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.nn.functional import *  # noqa: F401,F403
import torch.nn.functional as _F

# torch.nn.functional's star-export omits some public helpers; copy every public name.
globals().update({k: v for k, v in vars(_F).items() if not k.startswith("_") and k not in globals()})

# ---- fused attention ----
from ..ops import attention as _ops  # noqa: E402
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


def _math_attention_with_weights(query: Tensor, key: Tensor, value: Tensor,
                                 attn_mask: Optional[Tensor], dropout_p: float, is_causal: bool,
                                 scale: Optional[float], enable_gqa: bool) -> Tuple[Tensor, Tensor]:
    """The attention and its weights in plain torch ops, the torch path of
    scaled_dot_product_attention_with_weights: ops that ONNX (both exporters), TorchScript
    and torch.func all know (aten._scaled_dot_product_attention_math computes the same but
    has no ONNX symbolic). Same semantics as the fused kernel: a row whose every key is
    masked gets zero weights, as torch's CPU SDPA gives; NaN still propagates."""
    if enable_gqa and query.dim() >= 3 and key.size(-3) != query.size(-3):
        groups = query.size(-3) // key.size(-3)
        key = key.repeat_interleave(groups, -3)
        value = value.repeat_interleave(groups, -3)
    factor = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    scores = torch.matmul(query, key.transpose(-2, -1)) * factor
    keep: Optional[Tensor] = None
    if is_causal:
        keep = torch.ones(query.size(-2), key.size(-2), dtype=torch.bool,
                          device=query.device).tril()
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            keep = attn_mask if keep is None else keep & attn_mask
        else:
            scores = scores + attn_mask
    if keep is not None:
        scores = scores.masked_fill(keep.logical_not(), float("-inf"))
    none_kept = (scores == float("-inf")).all(dim=-1, keepdim=True)
    weights = torch.softmax(scores, dim=-1).masked_fill(none_kept, 0.0)
    if dropout_p > 0.0:
        weights = torch.dropout(weights, dropout_p, True)
    return torch.matmul(weights, value), weights


def scaled_dot_product_attention_with_weights(
        query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor] = None,
        dropout_p: float = 0.0, is_causal: bool = False, scale: Optional[float] = None,
        enable_gqa: bool = False) -> Tuple[Tensor, Tensor]:
    if torch.jit.is_scripting():
        return _math_attention_with_weights(query, key, value, attn_mask, dropout_p, is_causal,
                                            scale, enable_gqa)
    if _torch_path():
        return _math_attention_with_weights(query, key, value, attn_mask, dropout_p, is_causal,
                                            scale, enable_gqa)
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
