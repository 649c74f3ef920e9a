"""Per-frame video labeller ("many to many"): the same small CNN on every frame, an LSTM
over the frame features, a label for every frame from the LSTM's state at that frame."""
import torch

from ..layers import layers_for
from .encoder import ConvEncoder


class VideoLabeler(torch.nn.Module):
    kind = "video"

    def __init__(self, size: int = 32, channels=(16, 32), feature: int = 128, hidden: int = 128,
                 classes: int = 10, impl: str = "fastseq"):
        super().__init__()
        nn, _ = layers_for(impl)
        self.config = dict(size=size, channels=list(channels), feature=feature, hidden=hidden,
                           classes=classes, impl=impl)
        self.encoder = ConvEncoder(1, channels, pools=len(channels), impl=impl)
        grid = size // 2 ** len(channels)
        self.project = nn.Linear(self.encoder.out_channels * grid * grid, feature)
        self.lstm = nn.LSTM(feature, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, videos):
        """videos (B, T, 1, S, S) -> logits (B, T, classes)."""
        b, t = videos.shape[:2]
        feats = torch.relu(self.project(self.encoder(videos.flatten(0, 1)).flatten(1)))
        out, _ = self.lstm(feats.view(b, t, -1).transpose(0, 1))
        return self.head(out).transpose(0, 1)
