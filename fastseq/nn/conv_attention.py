"""SelfAttention2d: SAGAN-style self-attention over a (B, C, H, W) feature map, every
position attending to every other, on fastseq's fused scaled-dot-product attention."""
import torch
from torch import nn

from ..ops.attention import scaled_dot_product_attention, scaled_dot_product_attention_with_weights


class SelfAttention2d(nn.Module):
    """x + gamma * attention(x) with queries, keys and values from 1x1 convolutions.

    key_channels defaults to channels // 8 (SAGAN's reduction; at least 1). gamma starts
    at zero, so a freshly inserted layer is the identity and the network first learns
    from local features, then lets in the non-local ones. heads splits key and value
    channels into independent attention heads. forward(x, return_weights=True) also
    returns the weights (B, heads, H*W, H*W), query position by key position.
    """

    def __init__(self, channels: int, key_channels=None, heads: int = 1, bias: bool = True):
        super().__init__()
        key_channels = key_channels or max(1, channels // 8)
        if channels < 1 or key_channels < 1 or heads < 1:
            raise ValueError(f"SelfAttention2d: channels, key_channels and heads must be positive, "
                             f"got {channels}, {key_channels}, {heads}")
        if key_channels % heads or channels % heads:
            raise ValueError(f"SelfAttention2d: heads={heads} must divide key_channels={key_channels} "
                             f"and channels={channels}")
        self.channels, self.key_channels, self.heads = channels, key_channels, heads
        self.query = nn.Conv2d(channels, key_channels, 1, bias=bias)
        self.key = nn.Conv2d(channels, key_channels, 1, bias=bias)
        self.value = nn.Conv2d(channels, channels, 1, bias=bias)
        self.gamma = nn.Parameter(torch.zeros(1))

    def _split(self, t):
        # (B, heads*d, H, W) -> (B, heads, H*W, d): positions become the sequence.
        b, c, h, w = t.shape
        return t.reshape(b, self.heads, c // self.heads, h * w).transpose(-1, -2)

    def attend(self, q, k, v, return_weights):
        """(B, heads, N, d) queries/keys/values -> output, weights (or None)."""
        if return_weights:
            return scaled_dot_product_attention_with_weights(q, k, v)
        return scaled_dot_product_attention(q, k, v), None

    def forward(self, x, return_weights: bool = False):
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"SelfAttention2d: expected input (B, {self.channels}, H, W), "
                             f"got {tuple(x.shape)}")
        b, c, h, w = x.shape
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        out, weights = self.attend(q, k, v, return_weights)
        out = x + self.gamma * out.transpose(-1, -2).reshape(b, c, h, w)
        return (out, weights) if return_weights else out

    def extra_repr(self):
        return f"{self.channels}, key_channels={self.key_channels}, heads={self.heads}"
