"""Fused scaled-dot-product attention: torch.library custom ops around fastseq._C (fake
kernels for torch.compile, autograd through the fused backward) and the functional API
with torch.nn.functional.scaled_dot_product_attention's semantics."""
import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from .._ext import _C
from ._autocast import autocast_as, register_custom_op_autocast
from ._double_backward import create_graph_requested, recomputed_grads
from ._route import use_custom_op
from .reference_attention import math_attention

# ---------------------------------------------------------------------------------------
# Custom ops over 4-D problems: query [B, Hq, L, E], key [B, Hk, S, E], value [B, Hk, S, Ev],
# attn_mask [B, Hq, L, S] (any strides). `seed` is drawn inside the forward (so torch.compile
# sees no .item()) from torch's default generator and handed to the backward, which
# regenerates the dropout mask from it.


def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _draw_seed(dropout_p: float) -> Tensor:
    if dropout_p > 0.0:
        return torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64)
    return torch.zeros((), dtype=torch.int64)


@torch.library.custom_op("fastseq::attention_forward", mutates_args=())
def attention_forward(query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor],
                      dropout_p: float, is_causal: bool, scale: float) -> Tuple[Tensor, Tensor, Tensor]:
    seed = _draw_seed(dropout_p)
    out, lse, _ = _C.attention_forward(query, key, value, attn_mask, dropout_p, is_causal, scale,
                                       int(seed), False)
    return out, lse, seed


@torch.library.custom_op("fastseq::attention_forward_with_weights", mutates_args=())
def attention_forward_with_weights(query: Tensor, key: Tensor, value: Tensor,
                                   attn_mask: Optional[Tensor], dropout_p: float, is_causal: bool,
                                   scale: float) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    seed = _draw_seed(dropout_p)
    out, lse, weights = _C.attention_forward(query, key, value, attn_mask, dropout_p, is_causal,
                                             scale, int(seed), True)
    return out, lse, seed, weights


@torch.library.custom_op("fastseq::attention_backward", mutates_args=())
def attention_backward(grad_out: Tensor, grad_weights: Optional[Tensor], weights: Optional[Tensor],
                       query: Tensor, key: Tensor, value: Tensor, out: Tensor, lse: Tensor,
                       attn_mask: Optional[Tensor], dropout_p: float, is_causal: bool, scale: float,
                       seed: Tensor, mask_grad: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    dq, dk, dv, dmask = _C.attention_backward(grad_out, grad_weights, weights, query, key, value, out,
                                              lse, attn_mask, dropout_p, is_causal, scale, int(seed),
                                              mask_grad)
    # A custom op cannot return None: no mask gradient is an empty tensor.
    return dq, dk, dv, dmask if dmask is not None else query.new_empty(0)


def _fake_forward(query, key, value, attn_mask, dropout_p, is_causal, scale):
    B, Hq, L, _ = query.shape
    # The kernels' layout: [B, L, Hq, Ev] memory seen as [B, Hq, L, Ev] (attention.cpp).
    out = query.new_empty((B, L, Hq, value.shape[-1])).transpose(1, 2)
    lse = query.new_empty((B, Hq, L), dtype=_acc_dtype(query.dtype))
    seed = torch.empty((), dtype=torch.int64)
    return out, lse, seed


@attention_forward.register_fake
def _(query, key, value, attn_mask, dropout_p, is_causal, scale):
    return _fake_forward(query, key, value, attn_mask, dropout_p, is_causal, scale)


@attention_forward_with_weights.register_fake
def _(query, key, value, attn_mask, dropout_p, is_causal, scale):
    out, lse, seed = _fake_forward(query, key, value, attn_mask, dropout_p, is_causal, scale)
    B, Hq, L, _ = query.shape
    return out, lse, seed, query.new_empty((B, Hq, L, key.shape[-2]))


@attention_backward.register_fake
def _(grad_out, grad_weights, weights, query, key, value, out, lse, attn_mask, dropout_p, is_causal,
      scale, seed, mask_grad):
    dmask = (query.new_empty((query.shape[0], query.shape[1], query.shape[2], key.shape[2]))
             if mask_grad else query.new_empty(0))
    return (query.new_empty(query.shape), key.new_empty(key.shape), value.new_empty(value.shape),
            dmask)


# No register_autograd on the forward ops: _Attention below is the one autograd formula, and
# it calls these ops itself under torch.compile.
register_custom_op_autocast("fastseq::attention_forward", "attention")
register_custom_op_autocast("fastseq::attention_forward_with_weights", "attention")


def _eager_seed(dropout_p: float) -> int:
    # The same draw as _draw_seed (so eager and compiled runs agree), none without dropout.
    return int(_draw_seed(dropout_p)) if dropout_p > 0.0 else 0


def _forward(query, key, value, attn_mask, dropout_p, is_causal, scale, with_weights):
    """(out, lse, weights or None, seed): through the custom ops where torch.compile traces
    (or meta tensors need fake kernels), seed then a tensor; else straight to fastseq._C,
    seed an int (the custom-op dispatch costs ~50 us a call, which short sequences feel)."""
    if use_custom_op(query):
        if with_weights:
            out, lse, seed, weights = attention_forward_with_weights(
                query, key, value, attn_mask, dropout_p, is_causal, scale)
            return out, lse, weights, seed
        out, lse, seed = attention_forward(query, key, value, attn_mask, dropout_p, is_causal,
                                           scale)
        return out, lse, None, seed
    seed = _eager_seed(dropout_p)
    out, lse, weights = _C.attention_forward(query, key, value, attn_mask, dropout_p, is_causal,
                                             scale, seed, with_weights)
    return out, lse, weights, seed


def _recomputed_grads(ctx, query, key, value, attn_mask, grad_out, grad_weights, n_args):
    """Double backward: the attention recomputed in torch ops and differentiated by autograd;
    the dropout mask of the fused kernels has no torch-op equivalent."""
    dropout_p, is_causal, scale = ctx.args[:3]
    if dropout_p > 0.0:
        raise RuntimeError("fastseq scaled_dot_product_attention: double backward "
                           "(create_graph=True) is not supported with dropout_p > 0; use "
                           "dropout_p=0.0 for gradient penalties or higher-order gradients")
    with_weights = grad_weights is not None

    def forward(q, k, v, m):
        result = math_attention(q, k, v, m, 0.0, is_causal, scale, True)
        return result if with_weights else result[:1]
    grads = recomputed_grads(forward, (query, key, value, attn_mask), ctx.needs_input_grad[:4],
                             (grad_out, grad_weights) if with_weights else (grad_out,))
    return grads + (None,) * (n_args - 4)


class _Attention(torch.autograd.Function):
    """The one autograd formula of fused attention, for eager calls and under torch.compile
    alike (dynamo traces this Function; inside, _forward and the backward reach the kernels
    through the custom ops there, through fastseq._C eagerly). An old-style Function: a
    setup_context one costs ~60-80 us more per call in torch 2.13. Under create_graph=True
    the backward recomputes in torch ops (fastseq.ops._double_backward)."""

    @staticmethod
    def forward(ctx, query, key, value, attn_mask, dropout_p, is_causal, scale, with_weights):
        out, lse, weights, seed = _forward(query, key, value, attn_mask, dropout_p, is_causal,
                                           scale, with_weights)
        # An unused weights output must reach backward as None, not as a materialised
        # (N, H, L, S) zero tensor that the fused backward would then read.
        ctx.set_materialize_grads(False)
        ctx.args = (dropout_p, is_causal, scale)
        # A traced seed is a tensor (saved); an eager one an int (kept on ctx).
        traced = isinstance(seed, Tensor)
        ctx.seed = None if traced else seed
        ctx.save_for_backward(query, key, value, out, lse, attn_mask, weights,
                              seed if traced else None)
        return (out, weights) if with_weights else out

    @staticmethod
    def backward(ctx, grad_out, grad_weights=None):
        query, key, value, out, lse, attn_mask, weights, seed = ctx.saved_tensors
        dropout_p, is_causal, scale = ctx.args
        if create_graph_requested():
            return _recomputed_grads(ctx, query, key, value, attn_mask, grad_out, grad_weights, 8)
        mask_grad = bool(attn_mask is not None and attn_mask.is_floating_point()
                         and ctx.needs_input_grad[3])
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        saved_weights = weights if grad_weights is not None else None
        args = (grad_out, grad_weights, saved_weights, query, key, value, out, lse, attn_mask,
                dropout_p, is_causal, scale)
        if seed is not None:  # traced: the custom op
            dq, dk, dv, dmask = attention_backward(*args, seed, mask_grad)
        else:
            dq, dk, dv, dmask = _C.attention_backward(*args, ctx.seed, mask_grad)
        return dq, dk, dv, (dmask if mask_grad else None), None, None, None, None


def _attention(q4, k4, v4, m4, dropout_p, is_causal, scale, with_weights):
    """The autograd Function when a gradient can flow (or torch.compile traces); an eager
    call without one goes straight to the kernels (no ctx, nothing saved)."""
    if use_custom_op(q4) or (torch.is_grad_enabled() and (
            q4.requires_grad or k4.requires_grad or v4.requires_grad
            or (m4 is not None and m4.requires_grad))):
        return _Attention.apply(q4, k4, v4, m4, dropout_p, is_causal, scale, with_weights)
    out, _, weights, _ = _forward(q4, k4, v4, m4, dropout_p, is_causal, scale, with_weights)
    return (out, weights) if with_weights else out

# ---------------------------------------------------------------------------------------
# The functional API: torch's shapes in, 4-D problems to the ops, torch's shapes out.

_NAME = "scaled_dot_product_attention"


class AttentionArgumentError(ValueError, RuntimeError):
    """Bad arguments: a ValueError, and a RuntimeError like the errors torch's own
    scaled_dot_product_attention raises, so code written against torch catches it too."""


def _shape(t):
    return list(t.shape)


def _default_scale(E):
    return 1.0 / math.sqrt(E) if E > 0 else 1.0


def _prepare(query, key, value, attn_mask, is_causal, scale, enable_gqa):
    """Validates torch's argument contract and returns the 4-D views, the scale and the shape
    the output's leading dims must take."""
    # The common call, (B, H, L, E) tensors of one dtype and device, matching heads (or a
    # GQA multiple) and no mask, in a few attribute reads: the full checks below cost ~11 us,
    # which decoding steps and short sequences feel. Anything else takes the full path, which
    # also raises the precise errors.
    if (attn_mask is None and type(query) is Tensor and type(key) is Tensor and type(value) is Tensor
            and query.dim() == 4 and key.dim() == 4 and value.dim() == 4
            and key.dtype == query.dtype and value.dtype == query.dtype
            and key.device == query.device and value.device == query.device):
        B, Hq, L, E = query.shape
        Bk, Hk, S, Ek = key.shape
        Bv, Hv, Sv, Ev = value.shape
        if (B == Bk == Bv and Ek == E and Sv == S and Hv == Hk
                and (Hq == Hk or (enable_gqa and Hk > 0 and Hq % Hk == 0))):
            if scale is None:
                scale = _default_scale(E)
            return query, key, value, None, float(scale), (B, Hq), (L, Ev, S)
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{_NAME}: {name} must be a Tensor, got {type(t).__name__}")
        if t.dim() < 2:
            raise AttentionArgumentError(f"{_NAME}: {name} must have at least 2 dims (..., seq, features), "
                             f"got shape {_shape(t)}")
    for name, t in (("key", key), ("value", value)):
        if t.dtype != query.dtype:
            raise AttentionArgumentError(f"{_NAME}: {name} must have query's dtype ({query.dtype}), got {t.dtype}")
        if t.device != query.device:
            raise AttentionArgumentError(f"{_NAME}: {name} must be on query's device ({query.device}), "
                             f"got {t.device}")
    L, E = query.shape[-2:]
    S = key.shape[-2]
    if key.shape[-1] != E:
        raise AttentionArgumentError(f"{_NAME}: key's last dim must equal query's ({E}), got key shape "
                         f"{_shape(key)} for query shape {_shape(query)}")
    if value.shape[-2] != S:
        raise AttentionArgumentError(f"{_NAME}: value must have key's sequence length {S} at dim -2, got value "
                         f"shape {_shape(value)} for key shape {_shape(key)}")
    Ev = value.shape[-1]
    has_heads = max(query.dim(), key.dim(), value.dim()) >= 3
    Hq = query.shape[-3] if query.dim() >= 3 else 1
    Hk = key.shape[-3] if key.dim() >= 3 else 1
    Hv = value.shape[-3] if value.dim() >= 3 else 1
    if Hk != Hv:
        raise AttentionArgumentError(f"{_NAME}: key and value must have the same number of heads (dim -3), "
                         f"got key shape {_shape(key)} and value shape {_shape(value)}")
    if Hq != Hk:
        if enable_gqa:
            if Hk == 0 or Hq % Hk != 0:
                raise AttentionArgumentError(f"{_NAME}: with enable_gqa, query's heads (dim -3) must be a "
                                 f"multiple of key's; got query heads {Hq}, key heads {Hk}")
        elif Hk != 1 and Hq != 1:
            raise AttentionArgumentError(f"{_NAME}: query heads (dim -3) {Hq} must equal key/value heads {Hk} "
                             f"(pass enable_gqa=True for grouped-query attention with a multiple)")
    qb, kb, vb = query.shape[:-3], key.shape[:-3], value.shape[:-3]
    if qb == kb == vb:  # the common case, without torch.broadcast_shapes' ~13 us
        batch = qb
    else:
        try:
            batch = torch.broadcast_shapes(qb, kb, vb)
        except RuntimeError:
            raise AttentionArgumentError(
                f"{_NAME}: the batch dims (all but the last 3) of query {_shape(query)}, "
                f"key {_shape(key)} and value {_shape(value)} must broadcast") from None
    # Without enable_gqa torch broadcasts a single head: one key head serves every query head
    # (the kernels' group = Hq), one query head is expanded over the key heads.
    H, Hk_used = (Hk, Hk) if (Hq == 1 and Hk > 1 and not enable_gqa) else (Hq, Hk)
    B = math.prod(batch)

    def to4d(t, heads, seq, feat):
        if t.dim() == 4 and t.shape[0] == B and t.shape[1] == heads:
            return t
        if t.dim() < 3:
            t = t.reshape((1,) * (3 - t.dim()) + tuple(t.shape))
        return t.expand(*batch, heads, seq, feat).reshape(B, heads, seq, feat)

    q4 = to4d(query, H, L, E)
    k4 = to4d(key, Hk_used, S, E)
    v4 = to4d(value, Hk_used, S, Ev)
    out_lead = tuple(batch) + ((H,) if has_heads else ())

    m4 = None
    if attn_mask is not None:
        if not isinstance(attn_mask, Tensor):
            raise TypeError(f"{_NAME}: attn_mask must be a Tensor or None, got {type(attn_mask).__name__}")
        if attn_mask.device != query.device:
            raise AttentionArgumentError(f"{_NAME}: attn_mask must be on query's device ({query.device}), "
                             f"got {attn_mask.device}")
        if attn_mask.dtype != torch.bool:
            if attn_mask.dtype == torch.float32 and query.dtype != torch.float32:
                attn_mask = attn_mask.to(query.dtype)  # torch accepts float32 masks for any dtype
            elif attn_mask.dtype != query.dtype:
                raise AttentionArgumentError(f"{_NAME}: attn_mask must be bool, float32 or query's dtype "
                                 f"({query.dtype}), got {attn_mask.dtype}")
        full = tuple(batch) + (H, L, S)
        ms = tuple(attn_mask.shape)
        ok = len(ms) <= len(full) and all(m in (1, f) for m, f in zip(ms[::-1], full[::-1]))
        if not ok:
            raise AttentionArgumentError(f"{_NAME}: attn_mask must broadcast to (batch..., heads, L, S) = "
                                         f"{list(full)}, got shape {_shape(attn_mask)}")
        # A view with 0 strides on broadcast dims: the mask is never materialised.
        m4 = attn_mask.expand(full).reshape(B, H, L, S)
    if scale is None:
        scale = _default_scale(E)
    return q4, k4, v4, m4, float(scale), out_lead, (L, Ev, S)


def _check_dropout(dropout_p):
    if not 0.0 <= dropout_p <= 1.0:
        raise AttentionArgumentError(f"{_NAME}: dropout_p must be in [0, 1], got {dropout_p}")


def _run(q4, k4, v4, m4, dropout_p, is_causal, scale, with_weights):
    """dropout_p = 1 drops every weight: zeros, as torch gives (kept differentiable, and NaN
    or inf in the inputs still shows, through the product with 0)."""
    if dropout_p == 1.0:
        result = _attention(q4, k4, v4, m4, 0.0, is_causal, scale, with_weights)
        return tuple(r * 0.0 for r in result) if with_weights else result * 0.0
    return _attention(q4, k4, v4, m4, dropout_p, is_causal, scale, with_weights)


@autocast_as("attention")
def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                 scale=None, enable_gqa=False):
    """Fused drop-in for torch.nn.functional.scaled_dot_product_attention.

    Same arguments and semantics: query (..., Hq, L, E), key (..., Hk, S, E), value
    (..., Hk, S, Ev); a bool attn_mask (True = take part) or an additive float one,
    broadcastable to (..., Hq, L, S) and read in place through strides (never expanded);
    is_causal keeps the lower triangle of ones(L, S) (top-left aligned, as torch); scale
    defaults to 1/sqrt(E); enable_gqa lets Hq be a multiple of Hk. Like torch's default CPU
    kernel, is_causal together with attn_mask applies both. A query row whose every key is
    masked gets a zero output and zero gradients (torch 2.13 on CPU gives the same).

    dropout_p > 0 applies dropout to the attention weights, as torch does regardless of
    training mode; the mask comes from a counter-based hash seeded from torch's default
    generator, so it is reproducible under torch.manual_seed but not bit-equal to torch's.
    It runs on the same fused kernels (no slower path).

    float32, float64, bfloat16 and float16 (float32 accumulation for the latter two).
    Under torch.autocast it computes in the autocast dtype, as torch's does. Double backward
    (create_graph=True) recomputes the attention in torch ops and differentiates that
    (correct, not fused; not available with dropout_p > 0).
    """
    _check_dropout(dropout_p)
    q4, k4, v4, m4, scale, lead, (L, Ev, S) = _prepare(query, key, value, attn_mask, is_causal,
                                                        scale, enable_gqa)
    out = _run(q4, k4, v4, m4, float(dropout_p), bool(is_causal), scale, False)
    return out.reshape(lead + (L, Ev))


@autocast_as("attention")
def scaled_dot_product_attention_with_weights(query, key, value, attn_mask=None, dropout_p=0.0,
                                              is_causal=False, scale=None, enable_gqa=False):
    """scaled_dot_product_attention that also returns the attention weights.

    Returns (output, weights) with weights of shape (..., Hq, L, S): the softmax
    probabilities after dropout (scaled by 1/(1-dropout_p)), as
    torch.nn.MultiheadAttention returns them. Computed in the same fused pass as the output
    (the weight rows are the output buffer the softmax runs in); gradients flow into both.
    """
    _check_dropout(dropout_p)
    q4, k4, v4, m4, scale, lead, (L, Ev, S) = _prepare(query, key, value, attn_mask, is_causal,
                                                        scale, enable_gqa)
    out, weights = _run(q4, k4, v4, m4, float(dropout_p), bool(is_causal), scale, True)
    return out.reshape(lead + (L, Ev)), weights.reshape(lead + (L, S))


@autocast_as("attention")
def attention_with_averaged_weights(query, key, value, attn_mask=None, dropout_p=0.0, enable_gqa=False):
    """(output, weights averaged over the query heads, (..., L, S)) of a call that needs no
    gradient, as nn.MultiheadAttention returns them by default (need_weights,
    average_attn_weights): fastseq._C returns the average itself, written by the kernel while
    each head's weights tile is in cache where it can (CPU float32 through brgemm), else as
    the mean of the per-head weights in C++. None where the per-head path must run instead:
    a gradient is wanted (the backward reads per-head weights), torch.compile is tracing (its
    custom op returns per-head weights), or dropout_p = 1."""
    _check_dropout(dropout_p)
    if dropout_p == 1.0 or use_custom_op(query):
        return None
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in (query, key, value, attn_mask)):
        return None
    q4, k4, v4, m4, scale, lead, (L, Ev, S) = _prepare(query, key, value, attn_mask, False, None,
                                                        enable_gqa)
    out, _, weights = _C.attention_forward(q4, k4, v4, m4, float(dropout_p), False, scale,
                                           _eager_seed(dropout_p), True, True)
    return out.reshape(lead + (L, Ev)), weights.reshape(lead[:-1] + (L, S))
