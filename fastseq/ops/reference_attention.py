"""Scaled-dot-product attention in plain torch ops, with the fused kernels' semantics: the
one implementation behind fastseq.nn.functional's torch path (ONNX export, TorchScript,
torch.func, tracing) and the double backward of the fused op (fastseq.ops._double_backward).
Never the fast path."""
import math
from typing import Optional, Tuple

import torch
from torch import Tensor


def math_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor] = None,
                   dropout_p: float = 0.0, is_causal: bool = False, scale: Optional[float] = None,
                   enable_gqa: bool = False) -> Tuple[Tensor, Tensor]:
    """(output, weights) with torch's scaled_dot_product_attention arguments and shapes (any
    number of batch dims; a bool attn_mask is True where a key takes part, a float one is
    added; is_causal keeps tril(ones(L, S))). Only ops that ONNX (both exporters),
    TorchScript and torch.func all know (aten._scaled_dot_product_attention_math computes
    the same but has no ONNX symbolic).

    A row whose every key is masked (bool, causal or -inf additive entries) gets zero
    weights, a zero output and zero gradients, as the fused kernels and torch's CPU kernel
    give, also through a second derivative: its scores are replaced by zeros before the
    softmax, so no NaN arises in the forward or the backward. NaN in the inputs still
    propagates."""
    if enable_gqa and query.dim() >= 3 and key.dim() >= 3 and key.size(-3) != query.size(-3):
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
    weights = torch.softmax(scores.masked_fill(none_kept, 0.0), dim=-1).masked_fill(none_kept, 0.0)
    if dropout_p > 0.0:
        weights = torch.dropout(weights, dropout_p, True)
    return torch.matmul(weights, value), weights
