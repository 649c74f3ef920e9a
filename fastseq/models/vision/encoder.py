"""The small CNN every vision model here starts from: 3x3 convolutions with ReLU, each
block halving the resolution, optionally a SelfAttention2d after a chosen block. Built
through layers_for(impl) so `--impl torch` swaps in torch.nn (and a SelfAttention2d on
torch's own attention with the same parameter names)."""
import torch

from ..layers import layers_for
from ...nn.conv_attention import SelfAttention2d


class TorchSelfAttention2d(SelfAttention2d):
    """SelfAttention2d on torch.nn.functional's attention (the `--impl torch` twin)."""

    def attend(self, q, k, v, return_weights):
        if not return_weights:
            return torch.nn.functional.scaled_dot_product_attention(q, k, v), None
        weights = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1)
        return weights @ v, weights


def self_attention_2d(impl, channels):
    layers_for(impl)  # validates impl
    return (SelfAttention2d if impl == "fastseq" else TorchSelfAttention2d)(channels)


class ConvEncoder(torch.nn.Module):
    """(B, in_channels, H, W) -> (B, widths[-1], H / 2**pools, W / 2**pools).

    widths: output channels per block; the first `pools` blocks end in a 2x2 max-pool.
    kernels: convolution size per block (default 3 everywhere).
    attention_after: index of the block followed by SelfAttention2d (None: no attention).
    """

    def __init__(self, in_channels, widths, pools, impl="fastseq", attention_after=None, kernels=None):
        super().__init__()
        nn, _ = layers_for(impl)
        kernels = kernels or [3] * len(widths)
        if len(kernels) != len(widths) or min(kernels) < 1 or not all(k % 2 for k in kernels):
            raise ValueError(f"--kernels: expected {len(widths)} odd sizes (one per block), got {kernels}")
        blocks, channels = [], in_channels
        for i, (width, kernel) in enumerate(zip(widths, kernels)):
            blocks += [nn.Conv2d(channels, width, kernel, padding=kernel // 2), nn.ReLU()]
            if i < pools:
                blocks.append(nn.MaxPool2d(2))
            if i == attention_after:
                blocks.append(self_attention_2d(impl, width))
            channels = width
        self.blocks = nn.Sequential(*blocks)
        self.out_channels = channels

    def forward(self, x):
        return self.blocks(x)
