"""Whole-canvas digit classifiers: a small CNN (optionally with SelfAttention2d over its
feature map) and the fully connected baseline the RAM paper compares glimpses with."""
import torch

from ..layers import layers_for
from .encoder import ConvEncoder


class CNNClassifier(torch.nn.Module):
    """Three conv blocks, each halving the canvas (60 -> 30 -> 15 -> 7), global average
    pooling, a linear layer. self_attention puts SelfAttention2d after the second block,
    where a 15x15 map still resolves a digit from its fragments."""
    kind = "cnn"

    def __init__(self, canvas: int = 60, channels=(16, 32, 64), self_attention: bool = False,
                 classes: int = 10, impl: str = "fastseq"):
        super().__init__()
        nn, _ = layers_for(impl)
        self.config = dict(canvas=canvas, channels=list(channels), self_attention=self_attention,
                           classes=classes, impl=impl)
        self.encoder = ConvEncoder(1, channels, pools=len(channels), impl=impl,
                                   attention_after=1 if self_attention else None)
        self.head = nn.Linear(self.encoder.out_channels, classes)

    def forward(self, x):
        return self.head(self.encoder(x).mean((2, 3)))


class FCClassifier(torch.nn.Module):
    """Two ReLU hidden layers over the flattened canvas."""
    kind = "fc"

    def __init__(self, canvas: int = 60, hidden: int = 256, classes: int = 10, impl: str = "fastseq"):
        super().__init__()
        nn, _ = layers_for(impl)
        self.config = dict(canvas=canvas, hidden=hidden, classes=classes, impl=impl)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(canvas * canvas, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x):
        return self.net(x)
