"""fastseq.nn.MultiheadAttention: torch.nn.MultiheadAttention's constructor, parameters,
initialisation and state_dict, with the attention itself run by fastseq's fused kernel."""
import warnings
from typing import Optional, Tuple

import torch
import torch.nn.functional as torch_F
from torch import Tensor

# Looked up at call time (fused.scaled_dot_product_attention...), so that tests can count
# the calls and nothing is bound to a stale function object. Not `from . import
# functional`: the package's `from torch.nn import *` already bound torch's functional
# under that name, and the from-import would return it without loading fastseq's.
import fastseq.nn.functional as fused

from ..ops import attention as attention_ops
from ._interop import TorchTwin, use_torch_forward

__all__ = ["MultiheadAttention"]


def check_mask_dtype(mask: Optional[Tensor], name: str) -> None:
    """Masks are bool (True = masked out, torch.nn convention) or floating (added)."""
    if mask is not None and mask.dtype != torch.bool and not torch.is_floating_point(mask):
        raise AssertionError(
            f"only bool and floating types of {name} are supported, got {mask.dtype}")


def reconcile_mask_types(key_padding_mask: Optional[Tensor], kpm_name: str,
                         attn_mask: Optional[Tensor], attn_name: str, dtype: torch.dtype):
    """Checks both masks' dtypes; when one is bool and the other float, warns as torch does
    and turns both into additive float masks (torch's deprecated mixed-type behaviour).
    Masks of one kind are returned unchanged: bool masks stay bool, which the fused kernel
    reads as a byte mask instead of a float tensor of scores."""
    check_mask_dtype(key_padding_mask, kpm_name)
    check_mask_dtype(attn_mask, attn_name)
    if key_padding_mask is not None and attn_mask is not None \
            and key_padding_mask.dtype != attn_mask.dtype:
        warnings.warn(f"Support for mismatched {kpm_name} and {attn_name} is deprecated. "
                      "Use same type for both instead.", stacklevel=3)
        key_padding_mask = additive_mask(key_padding_mask, dtype)
        attn_mask = additive_mask(attn_mask, dtype)
    return key_padding_mask, attn_mask


def additive_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """bool (True = masked out) -> float with -inf where masked; float masks unchanged."""
    if mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))


def _check_shapes(query, key, value, key_padding_mask, attn_mask, num_heads) -> bool:
    """torch's _mha_shape_check (same exception types), with messages that name the
    argument, the expected and the actual shape. Returns whether the input is batched."""
    if query.dim() == 3:
        if key.dim() != 3 or value.dim() != 3:
            raise AssertionError(
                "For batched (3-D) `query`, expected `key` and `value` to be 3-D but found "
                f"{key.dim()}-D and {value.dim()}-D tensors respectively")
        if key_padding_mask is not None and key_padding_mask.dim() != 2:
            raise AssertionError(
                "For batched (3-D) `query`, expected `key_padding_mask` to be `None` or 2-D "
                f"(N, S) but found {key_padding_mask.dim()}-D tensor of shape "
                f"{tuple(key_padding_mask.shape)} instead")
        if attn_mask is not None and attn_mask.dim() not in (2, 3):
            raise AssertionError(
                "For batched (3-D) `query`, expected `attn_mask` to be `None`, 2-D or 3-D but "
                f"found {attn_mask.dim()}-D tensor instead")
        return True
    if query.dim() == 2:
        if key.dim() != 2 or value.dim() != 2:
            raise AssertionError(
                "For unbatched (2-D) `query`, expected `key` and `value` to be 2-D but found "
                f"{key.dim()}-D and {value.dim()}-D tensors respectively")
        if key_padding_mask is not None and key_padding_mask.dim() != 1:
            raise AssertionError(
                "For unbatched (2-D) `query`, expected `key_padding_mask` to be `None` or 1-D "
                f"(S,) but found {key_padding_mask.dim()}-D tensor instead")
        if attn_mask is not None:
            if attn_mask.dim() not in (2, 3):
                raise AssertionError(
                    "For unbatched (2-D) `query`, expected `attn_mask` to be `None`, 2-D or 3-D "
                    f"but found {attn_mask.dim()}-D tensor instead")
            if attn_mask.dim() == 3:
                expected = (num_heads, query.shape[0], key.shape[0])
                if tuple(attn_mask.shape) != expected:
                    raise AssertionError(
                        f"Expected `attn_mask` shape to be {expected} but got {tuple(attn_mask.shape)}")
        return False
    raise AssertionError("query should be unbatched 2D or batched 3D tensor but received "
                         f"{query.dim()}-D query tensor")


def _split_heads(proj: Tensor, chunks: int, num_heads: int, seq_first: bool):
    """(A, B, chunks*E) projection -> `chunks` views of shape (N, H, T, D), no copy.
    (A, B) is (T, N) when seq_first else (N, T); the fused kernel reads strided q/k/v."""
    a, b, width = proj.shape
    head_dim = width // (chunks * num_heads)
    heads = proj.view(a, b, chunks, num_heads, head_dim)
    heads = heads.permute(2, 1, 3, 0, 4) if seq_first else heads.permute(2, 0, 3, 1, 4)
    return heads.unbind(0)


def _append_kv(k: Tensor, v: Tensor, extra_k: Tensor, extra_v: Tensor):
    """Appends one key/value position (bias_k/bias_v or zeros), each (N, H, 1, D)."""
    return torch.cat([k, extra_k], dim=2), torch.cat([v, extra_v], dim=2)


class MultiheadAttention(TorchTwin, torch.nn.MultiheadAttention):
    """Drop-in for :class:`torch.nn.MultiheadAttention` (same arguments, parameters, init,
    state_dict, inputs and outputs); the attention runs in
    ``fastseq.nn.functional.scaled_dot_product_attention`` (``..._with_weights`` when
    ``need_weights=True``). Never takes torch's native fast path.

    Difference from torch: with ``need_weights=True`` a query row whose keys are all
    masked gives a zero attention row (as torch's ``need_weights=False`` path does), not NaN.

    Under ONNX export, torch.jit.trace and torch.func transforms (fastseq.nn._interop,
    docs/interop.md) it runs torch.nn.MultiheadAttention's own forward, which exports as
    ONNX MatMul/Softmax attention and composes with grad/jacrev/vmap; there the difference
    above does not apply (torch's NaN rows). torch.jit.script scripts the equivalent
    torch.nn.MultiheadAttention (same parameters).
    """

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Optional[Tensor] = None,
        need_weights: bool = True,
        attn_mask: Optional[Tensor] = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> Tuple[Tensor, Optional[Tensor]]:
        if use_torch_forward():
            return super().forward(query, key, value, key_padding_mask, need_weights, attn_mask,
                                   average_attn_weights, is_causal)
        if query.is_nested or key.is_nested or value.is_nested:
            raise AssertionError("fastseq.nn.MultiheadAttention does not take NestedTensor inputs; "
                                 "pass padded tensors and a key_padding_mask")
        is_batched = _check_shapes(query, key, value, key_padding_mask, attn_mask, self.num_heads)
        key_padding_mask, attn_mask = reconcile_mask_types(
            key_padding_mask, "key_padding_mask", attn_mask, "attn_mask", query.dtype)

        # Work in the caller's layout: (T, N, E) when seq_first, else (N, T, E); the head
        # split below is a strided view either way, so no input transpose is copied.
        seq_first = is_batched and not self.batch_first
        if not is_batched:
            query, key, value = _unsqueeze_same(query, key, value)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        bdim, tdim = (1, 0) if seq_first else (0, 1)
        bsz, tgt_len, embed_dim = query.shape[bdim], query.shape[tdim], query.shape[2]
        src_len = key.shape[tdim]
        self._check_sizes(query, key, value, bsz, embed_dim, bdim, tdim)

        if is_causal and attn_mask is None:
            raise RuntimeError(
                "Need attn_mask if specifying the is_causal hint. You may use the Transformer "
                "module method `generate_square_subsequent_mask` to create this mask.")
        # As torch: without padding mask or weights the hint replaces the (causal) mask.
        use_causal_flag = is_causal and key_padding_mask is None and not need_weights
        if use_causal_flag:
            attn_mask = None
        if attn_mask is not None:
            attn_mask = self._attn_mask_4d(attn_mask, bsz, tgt_len, src_len)
        if key_padding_mask is not None:
            if tuple(key_padding_mask.shape) != (bsz, src_len):
                raise AssertionError(
                    f"Expected key_padding_mask of shape {(bsz, src_len) if is_batched else (src_len,)} "
                    f"(batch, source length), but got "
                    f"{tuple(key_padding_mask.shape) if is_batched else tuple(key_padding_mask.shape[1:])}")
            key_padding_mask = key_padding_mask.view(bsz, 1, 1, src_len)
        for name, m in (("attn_mask", attn_mask), ("key_padding_mask", key_padding_mask)):
            if m is not None and m.dtype != torch.bool and m.dtype != query.dtype:
                raise RuntimeError(f"float {name} must have the dtype of query ({query.dtype}), "
                                   f"got {m.dtype}")

        q, k, v = self._project(query, key, value, seq_first)   # each (N, H, T, D)
        extra = []
        if self.bias_k is not None and self.bias_v is not None:
            n, h, _, d = k.shape
            extra.append((self.bias_k.view(1, h, 1, d).expand(n, h, 1, d),
                          self.bias_v.view(1, h, 1, d).expand(n, h, 1, d)))
        elif self.bias_k is not None or self.bias_v is not None:
            raise AssertionError("bias_k and bias_v must be both set or both None")
        if self.add_zero_attn:
            zeros = k.new_zeros(k.shape[0], k.shape[1], 1, k.shape[3])
            extra.append((zeros, zeros))
        for extra_k, extra_v in extra:
            k, v = _append_kv(k, v, extra_k, extra_v)
            # The appended position takes part for every query: pad masks with "not masked".
            attn_mask = None if attn_mask is None else torch_F.pad(attn_mask, (0, 1))
            key_padding_mask = None if key_padding_mask is None else torch_F.pad(key_padding_mask, (0, 1))

        mask = _merge_masks(attn_mask, key_padding_mask, query.dtype)
        dropout_p = self.dropout if self.training else 0.0
        averaged = None
        if need_weights and average_attn_weights:
            averaged = attention_ops.attention_with_averaged_weights(q, k, v, mask, dropout_p)
        if averaged is not None:
            out, weights = averaged
        elif need_weights:
            out, weights = fused.scaled_dot_product_attention_with_weights(
                q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=False)
        else:
            out = fused.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=use_causal_flag)
            weights = None
        del q, k, v

        # (N, H, L, D) -> caller's layout, heads concatenated, then the output projection.
        out = out.permute(2, 0, 1, 3) if seq_first else out.transpose(1, 2)
        out = out.reshape(out.shape[0], out.shape[1], embed_dim)
        out = torch_F.linear(out, self.out_proj.weight, self.out_proj.bias)
        if not is_batched:
            out = out.squeeze(0)
        if weights is not None:
            if average_attn_weights and averaged is None:
                weights = weights.mean(dim=1)
            if not is_batched:
                weights = weights.squeeze(0)
        return out, weights

    def _check_sizes(self, query, key, value, bsz, embed_dim, bdim, tdim):
        if embed_dim != self.embed_dim:
            raise AssertionError(
                f"query: was expecting embedding dimension of {self.embed_dim}, but got {embed_dim}")
        if key.shape[bdim] != bsz or value.shape[bdim] != bsz:
            raise AssertionError(
                f"key and value must have query's batch size {bsz}, got key batch "
                f"{key.shape[bdim]} and value batch {value.shape[bdim]}")
        if key.shape[tdim] != value.shape[tdim]:
            raise AssertionError(
                f"key and value must have the same sequence length, got key {key.shape[tdim]} "
                f"and value {value.shape[tdim]}")
        if key.shape[-1] != self.kdim:
            raise AssertionError(f"key: expected embedding dimension (kdim) {self.kdim}, "
                                 f"got {key.shape[-1]}")
        if value.shape[-1] != self.vdim:
            raise AssertionError(f"value: expected embedding dimension (vdim) {self.vdim}, "
                                 f"got {value.shape[-1]}")

    def _attn_mask_4d(self, attn_mask, bsz, tgt_len, src_len):
        """2-D (L, S) stays 2-D (broadcast by the kernel); 3-D (N*H, L, S) -> (N, H, L, S)."""
        if attn_mask.dim() == 2:
            if tuple(attn_mask.shape) != (tgt_len, src_len):
                raise RuntimeError(f"The shape of the 2D attn_mask is {tuple(attn_mask.shape)}, "
                                   f"but should be {(tgt_len, src_len)}.")
            return attn_mask
        expected = (bsz * self.num_heads, tgt_len, src_len)
        if tuple(attn_mask.shape) != expected:
            raise RuntimeError(f"The shape of the 3D attn_mask is {tuple(attn_mask.shape)}, "
                               f"but should be {expected}.")
        return attn_mask.view(bsz, self.num_heads, tgt_len, src_len)

    def _project(self, query, key, value, seq_first):
        """In-projections, shared matmuls for self- and encoder-decoder attention as torch."""
        h = self.num_heads
        b = self.in_proj_bias
        if self._qkv_same_embed_dim:
            w = self.in_proj_weight
            e = self.embed_dim
            if query is key and key is value:
                return _split_heads(torch_F.linear(query, w, b), 3, h, seq_first)
            if key is value:
                w_q, w_kv = w.split([e, 2 * e])
                b_q, b_kv = (None, None) if b is None else b.split([e, 2 * e])
                (q,) = _split_heads(torch_F.linear(query, w_q, b_q), 1, h, seq_first)
                k, v = _split_heads(torch_F.linear(key, w_kv, b_kv), 2, h, seq_first)
                return q, k, v
            w_q, w_k, w_v = w.chunk(3)
        else:
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        b_q, b_k, b_v = (None, None, None) if b is None else b.chunk(3)
        return tuple(_split_heads(torch_F.linear(x, w_x, b_x), 1, h, seq_first)[0]
                     for x, w_x, b_x in ((query, w_q, b_q), (key, w_k, b_k), (value, w_v, b_v)))


def _unsqueeze_same(query, key, value):
    """Adds a batch dim at 0, keeping `is` identity (it picks the shared projection)."""
    q = query.unsqueeze(0)
    k = q if key is query else key.unsqueeze(0)
    v = k if value is key else (q if value is query else value.unsqueeze(0))
    return q, k, v


def _merge_masks(attn_mask, key_padding_mask, dtype):
    """One mask for the kernel in torch.nn.functional.scaled_dot_product_attention's
    convention (bool True = take part, or additive float), broadcastable to (N, H, L, S):
    (L, S), (N, H, L, S), (N, 1, 1, S) or (N, 1|H, L, S) when both are given; never
    expanded over heads."""
    if attn_mask is None and key_padding_mask is None:
        return None
    if attn_mask is None or key_padding_mask is None:
        mask = attn_mask if key_padding_mask is None else key_padding_mask
        return mask.logical_not() if mask.dtype == torch.bool else mask
    if attn_mask.dtype == torch.bool:   # both bool (mixed types were made float earlier)
        return (attn_mask | key_padding_mask).logical_not_()
    return attn_mask + key_padding_mask
