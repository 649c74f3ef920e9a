"""GPT: a decoder-only transformer with pre-norm blocks, causal self-attention through
fastseq.nn.functional.scaled_dot_product_attention(is_causal=True) and learned or
sinusoidal positions."""
import math

import torch

from .layers import layers_for


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table


class CausalSelfAttention(torch.nn.Module):
    def __init__(self, nn, functional, d_model: int, heads: int, dropout: float):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model: expected a multiple of heads={heads}, got {d_model}")
        self.functional, self.heads, self.dropout = functional, heads, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x, return_weights: bool = False):
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        if return_weights:
            # The fused kernel never materialises the weights; the pictures recompute them.
            scores = q @ k.transpose(-1, -2) / math.sqrt(D // self.heads)
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
            weights = scores.masked_fill(mask, float("-inf")).softmax(-1)
            y = weights @ v
        else:
            weights = None
            y = self.functional.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, D)), weights


class Block(torch.nn.Module):
    """Pre-norm: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, nn, functional, d_model, heads, dropout):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(nn, functional, d_model, heads, dropout)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(),
                                 nn.Linear(4 * d_model, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, x, return_weights=False):
        y, weights = self.attn(self.ln1(x), return_weights)
        x = x + self.drop(y)
        return x + self.drop(self.mlp(self.ln2(x))), weights


class GPT(torch.nn.Module):
    kind = "gpt"

    def __init__(self, vocab_size: int, context: int = 128, d_model: int = 128, heads: int = 4,
                 layers: int = 4, dropout: float = 0.0, positions: str = "learned",
                 impl: str = "fastseq"):
        super().__init__()
        if positions not in ("learned", "sinusoidal"):
            raise ValueError(f"positions: expected 'learned' or 'sinusoidal', got {positions!r}")
        nn, functional = layers_for(impl)
        self.config = dict(vocab_size=vocab_size, context=context, d_model=d_model, heads=heads,
                           layers=layers, dropout=dropout, positions=positions, impl=impl)
        self.context = context
        self.tok = nn.Embedding(vocab_size, d_model)
        if positions == "learned":
            self.pos = nn.Embedding(context, d_model)
        else:
            self.pos = None
            # Not persistent: the table is recomputed, so state_dicts match across variants.
            self.register_buffer("pos_table", sinusoidal_positions(context, d_model), persistent=False)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(nn, functional, d_model, heads, dropout) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)
        self._init_weights(nn, layers)

    def _init_weights(self, nn, layers):
        # GPT-2's scheme: N(0, 0.02) weights, zero biases, and the projections that add
        # into the residual stream scaled by 1/sqrt(2 * layers) so its variance stays put.
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("attn.proj", "mlp.2")) else 0.02
                nn.init.normal_(module.weight, 0.0, std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, tokens, return_weights: bool = False):
        """tokens (B, T) with T <= context -> logits (B, T, V); with return_weights also a
        list over layers of (B, heads, T, T) attention weights."""
        T = tokens.shape[1]
        if T > self.context:
            raise ValueError(f"tokens: expected at most context={self.context} positions, got {T}")
        pos = self.pos.weight[:T] if self.pos is not None else self.pos_table[:T]
        x = self.drop(self.tok(tokens) + pos)
        all_weights = []
        for block in self.blocks:
            x, weights = block(x, return_weights)
            all_weights.append(weights)
        logits = self.head(self.ln_f(x))
        return (logits, all_weights) if return_weights else logits
