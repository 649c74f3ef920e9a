"""Drop-in Transformer, TransformerEncoder/Decoder(Layer): torch's classes (same arguments,
parameters, init, RNG draws, state_dict) whose attention is fastseq.nn.MultiheadAttention,
and which never take torch's native fast path (_transformer_encoder_layer_fwd, nested tensors).

Their own code is plain torch ops around fastseq.nn.MultiheadAttention, which switches to
torch's attention under ONNX export, tracing and torch.func (fastseq.nn._interop), so they
export and compose as torch's do; torch.jit.script scripts the torch twins (TorchTwin)."""
from typing import Any, Callable, Optional, Union

import torch
import torch.nn.functional as torch_F
from torch import Tensor

from ._interop import TorchTwin
from .attention import MultiheadAttention, reconcile_mask_types

__all__ = ["Transformer", "TransformerEncoder", "TransformerDecoder",
           "TransformerEncoderLayer", "TransformerDecoderLayer"]


def _adopt_attention(attn: torch.nn.Module) -> torch.nn.Module:
    """Turns the torch.nn.MultiheadAttention that torch's constructor has just built into a
    fastseq one in place. fastseq's class only overrides forward and adds no state, so the
    parameters, their init (the very same RNG draws) and the state_dict stay torch's."""
    if type(attn) is torch.nn.MultiheadAttention:
        attn.__class__ = MultiheadAttention
    return attn


def _seq_len(src: Tensor, batch_first: bool) -> int:
    return src.size(0) if src.dim() == 2 else src.size(1 if batch_first else 0)


def _detect_is_causal_mask(mask: Optional[Tensor], is_causal: Optional[bool], size: int) -> bool:
    """torch's rule: an explicit is_causal wins; else a (L, L) mask equal to the causal
    mask (bool True above the diagonal, or float -inf above and 0 elsewhere) counts."""
    if is_causal is not None or mask is None:
        return is_causal is True
    if tuple(mask.shape) != (size, size):
        return False
    above = torch.ones(size, size, dtype=torch.bool, device=mask.device).triu_(1)
    if mask.dtype == torch.bool:
        return bool(torch.equal(mask, above))
    causal = torch.zeros(size, size, dtype=mask.dtype, device=mask.device).masked_fill_(above, float("-inf"))
    return bool((mask == causal).all())


class TransformerEncoderLayer(TorchTwin, torch.nn.TransformerEncoderLayer):
    """Drop-in for :class:`torch.nn.TransformerEncoderLayer`; self-attention in fastseq."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: Union[str, Callable[[Tensor], Tensor]] = torch_F.relu,
                 layer_norm_eps: float = 1e-5, batch_first: bool = False, norm_first: bool = False,
                 bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps,
                         batch_first, norm_first, bias, device=device, dtype=dtype)
        self.self_attn = _adopt_attention(self.self_attn)

    def forward(self, src: Tensor, src_mask: Optional[Tensor] = None,
                src_key_padding_mask: Optional[Tensor] = None, is_causal: bool = False) -> Tensor:
        # torch's slow path, minus its float conversion of bool masks (the kernel reads bool).
        src_key_padding_mask, src_mask = reconcile_mask_types(
            src_key_padding_mask, "src_key_padding_mask", src_mask, "src_mask", src.dtype)
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal=is_causal)
            x = x + self._ff_block(self.norm2(x))
        else:
            x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal=is_causal))
            x = self.norm2(x + self._ff_block(x))
        return x


class TransformerDecoderLayer(TorchTwin, torch.nn.TransformerDecoderLayer):
    """Drop-in for :class:`torch.nn.TransformerDecoderLayer`; both attentions in fastseq.
    torch's forward has no fast path and calls self.self_attn / self.multihead_attn, so it
    is inherited unchanged."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: Union[str, Callable[[Tensor], Tensor]] = torch_F.relu,
                 layer_norm_eps: float = 1e-5, batch_first: bool = False, norm_first: bool = False,
                 bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps,
                         batch_first, norm_first, bias, device=device, dtype=dtype)
        self.self_attn = _adopt_attention(self.self_attn)
        self.multihead_attn = _adopt_attention(self.multihead_attn)


class TransformerEncoder(TorchTwin, torch.nn.TransformerEncoder):
    """Drop-in for :class:`torch.nn.TransformerEncoder`. ``enable_nested_tensor`` is kept as
    an attribute for compatibility but nested tensors are never used: padding is handled by
    the key_padding_mask inside fastseq's kernel (padded positions therefore get the same
    values as in torch's training path, not the zeros of torch's nested-tensor path)."""

    def __init__(self, encoder_layer: torch.nn.Module, num_layers: int,
                 norm: Optional[torch.nn.Module] = None, enable_nested_tensor: bool = True,
                 mask_check: bool = True) -> None:
        super().__init__(encoder_layer, num_layers, norm, enable_nested_tensor=False,
                         mask_check=mask_check)
        self.enable_nested_tensor = enable_nested_tensor
        self.use_nested_tensor = False

    def forward(self, src: Tensor, mask: Optional[Tensor] = None,
                src_key_padding_mask: Optional[Tensor] = None,
                is_causal: Optional[bool] = None) -> Tensor:
        src_key_padding_mask, mask = reconcile_mask_types(
            src_key_padding_mask, "src_key_padding_mask", mask, "mask", src.dtype)
        batch_first = self.layers[0].self_attn.batch_first
        is_causal = _detect_is_causal_mask(mask, is_causal, _seq_len(src, batch_first))
        output = src
        for layer in self.layers:
            output = layer(output, src_mask=mask, is_causal=is_causal,
                           src_key_padding_mask=src_key_padding_mask)
        if self.norm is not None:
            output = self.norm(output)
        return output


class TransformerDecoder(TorchTwin, torch.nn.TransformerDecoder):
    """Drop-in for :class:`torch.nn.TransformerDecoder` (torch's forward has no fast path;
    the layers are clones of the given, normally fastseq, decoder layer)."""


class Transformer(TorchTwin, torch.nn.Transformer):
    """Drop-in for :class:`torch.nn.Transformer`, built from fastseq's encoder and decoder
    layers. The constructor repeats torch's (same modules, same order, same RNG draws, the
    same final xavier_uniform_ of every matrix), since torch's builds torch's layers."""

    def __init__(self, d_model: int = 512, nhead: int = 8, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: Union[str, Callable[[Tensor], Tensor]] = torch_F.relu,
                 custom_encoder: Optional[Any] = None, custom_decoder: Optional[Any] = None,
                 layer_norm_eps: float = 1e-5, batch_first: bool = False, norm_first: bool = False,
                 bias: bool = True, device=None, dtype=None) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        torch.nn.Module.__init__(self)
        torch._C._log_api_usage_once(f"fastseq.nn.{self.__class__.__name__}")
        if custom_encoder is not None:
            self.encoder = custom_encoder
        else:
            encoder_layer = TransformerEncoderLayer(
                d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps,
                batch_first, norm_first, bias, **factory_kwargs)
            encoder_norm = torch.nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory_kwargs)
            self.encoder = TransformerEncoder(encoder_layer, num_encoder_layers, encoder_norm)
        if custom_decoder is not None:
            self.decoder = custom_decoder
        else:
            decoder_layer = TransformerDecoderLayer(
                d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps,
                batch_first, norm_first, bias, **factory_kwargs)
            decoder_norm = torch.nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory_kwargs)
            self.decoder = TransformerDecoder(decoder_layer, num_decoder_layers, decoder_norm)
        self._reset_parameters()
        self.d_model = d_model
        self.nhead = nhead
        self.batch_first = batch_first
