"""The layer shapes of the recurrent benchmarks (LSTM, GRU, RNN share them): the full
suite's grid covers B = 1..64, H = 64..512, 1-3 layers, bidirectional and batch_first
layers with a core cross product plus one case per feature, rather than a full product."""
import itertools
from typing import NamedTuple


class LayerShape(NamedTuple):
    T: int
    B: int
    H: int
    L: int = 1
    bidirectional: bool = False
    batch_first: bool = False
    I: int = 0                   # input size; 0: the hidden size

    @property
    def input_size(self):
        return self.I or self.H

    def label(self):
        extra = "".join([" bidir" if self.bidirectional else "", " batch_first" if self.batch_first else ""])
        sizes = f"I={self.I} H={self.H}" if self.I else f"I=H={self.H}"
        return f"T={self.T} B={self.B} {sizes} L={self.L}{extra}"

    def dims(self):
        return dict(T=self.T, B=self.B, H=self.H, L=self.L, **({"I": self.I} if self.I else {}))


FULL = [LayerShape(T, B, H) for T, B, H in itertools.product((35, 100), (1, 8, 64), (64, 256, 512))] + [
    LayerShape(100, 16, 128, L=3),
    LayerShape(100, 32, 256, L=2, bidirectional=True),
    LayerShape(50, 32, 128, batch_first=True),
    LayerShape(200, 4, 128, L=2, bidirectional=True, batch_first=True),
]

# bfloat16 layers (full suite): module and input in bfloat16 on both sides.
BF16 = [LayerShape(100, B, H) for B in (1, 8, 64) for H in (64, 256)] + [LayerShape(35, 64, 512)]
