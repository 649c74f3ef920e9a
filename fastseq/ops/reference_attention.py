"""Pure-torch scaled-dot-product attention over the fused kernels' 4-D problems, with their
semantics (grouped heads, causal top-left, bool/additive masks, a fully masked row gives 0).
Used by tests and by the double backward (fastseq.ops._double_backward), never the fast path."""
from typing import Optional

import torch
from torch import Tensor


def attention_reference(query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor],
                        is_causal: bool, scale: float, with_weights: bool = False):
    """query [B, Hq, L, E], key [B, Hk, S, E], value [B, Hk, S, Ev] (Hq a multiple of Hk),
    attn_mask [B, Hq, L, S] bool (True = take part) or additive -> out [B, Hq, L, Ev]
    (and the weights [B, Hq, L, S] with with_weights)."""
    group = query.size(1) // max(key.size(1), 1)
    if group > 1:
        key, value = key.repeat_interleave(group, 1), value.repeat_interleave(group, 1)
    scores = (query @ key.transpose(-1, -2)) * scale
    L, S = scores.shape[-2:]
    allowed = None
    if is_causal:
        allowed = torch.ones(L, S, dtype=torch.bool, device=query.device).tril()
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            allowed = attn_mask if allowed is None else allowed & attn_mask
        else:
            scores = scores + attn_mask
    if allowed is not None:
        # A row with no allowed key gives zeros (and zero gradients), not softmax's NaN.
        row_any = allowed.any(-1, keepdim=True)
        fill = torch.where(row_any, float("-inf"), 0.0).to(scores.dtype)
        scores = torch.where(allowed, scores, fill)
        weights = torch.softmax(scores, -1) * row_any
    else:
        weights = torch.softmax(scores, -1)
    out = weights @ value
    return (out, weights) if with_weights else out
