"""Benchmark cases: fastseq.nn.LSTM / LSTMCell against torch.nn.LSTM / LSTMCell (on CPU torch
runs oneDNN's fused RNN, aten::mkldnn_rnn_layer, for float32 without projection), training
(forward + backward) and inference (no_grad). No case falls back to torch. Flop counts:
flops.recurrent with 4 gates."""
import itertools

import torch

from . import flops, recurrent_grid
from .harness import BenchCase
from .recurrent_grid import LayerShape

OPS = ("lstm", "lstm_cell", "lstm_bf16")
BF16_NOTE = {"infer": "bfloat16 steps on oneDNN brgemm (AMX / AVX512-BF16) where the CPU has it, else float32 compute",
             "train": "bfloat16 steps on oneDNN brgemm forward and backward (float32 gate math and states) "
                      "where the CPU has it, else float32 compute"}
# Full suite: the training memory case of the recurrent issue (peak memory measured too).
MEMORY_SHAPE = LayerShape(500, 32, 512, L=2, I=256)
# Suite "scaling": one of T, B, H varied around T=100 B=16 H=128, one layer.
SCALING_BASE = dict(T=100, B=16, H=128)
SCALING_AXES = dict(T=(25, 50, 100, 200, 400), B=(1, 4, 16, 64), H=(64, 128, 256, 512))


def _layer_setup(shape, mode, device, dtype=torch.float32):
    T, B, H, L, I = shape.T, shape.B, shape.H, shape.L, shape.input_size
    kw = dict(num_layers=L, bidirectional=shape.bidirectional, batch_first=shape.batch_first)

    def setup():
        torch.manual_seed(0)
        ref = torch.nn.LSTM(I, H, **kw).to(device, dtype)
        from ..nn import LSTM
        fast = LSTM(I, H, **kw).to(device, dtype)
        fast.load_state_dict(ref.state_dict())
        x = (torch.randn(B, T, I, device=device) if shape.batch_first else torch.randn(T, B, I, device=device)).to(dtype)

        def make(module):
            params = list(module.parameters())
            if mode == "infer":
                def run():
                    with torch.no_grad():
                        return module(x)[0]
                return run
            xg = x.clone().requires_grad_()

            def run():
                out, (h, c) = module(xg)
                loss = out.float().sum() + h.float().sum()
                return [out.detach(), *torch.autograd.grad(loss, [xg] + params)]
            return run
        return make(ref), make(fast)
    return setup


def _cell_setup(B, H, mode, device):
    def setup():
        torch.manual_seed(0)
        ref = torch.nn.LSTMCell(H, H).to(device)
        from ..nn import LSTMCell
        fast = LSTMCell(H, H).to(device)
        fast.load_state_dict(ref.state_dict())
        x, h, c = (torch.randn(B, H, device=device) for _ in range(3))

        def make(module):
            params = list(module.parameters())
            if mode == "infer":
                def run():
                    with torch.no_grad():
                        return module(x, (h, c))
                return run

            def run():
                h1, c1 = module(x, (h, c))
                return list(torch.autograd.grad(h1.sum() + c1.sum(), params))
            return run
        return make(ref), make(fast)
    return setup


def _scaling_grid():
    grid = []
    for axis, values in SCALING_AXES.items():
        for value, mode in itertools.product(values, ("train", "infer")):
            dims = dict(SCALING_BASE, **{axis: value})
            if (dims["T"], dims["B"], dims["H"], 1, mode) not in grid:
                grid.append((dims["T"], dims["B"], dims["H"], 1, mode))
    return grid


def cases(suite, device):
    cells = []
    if suite == "small":
        grid = [LayerShape(35, 16, 128), LayerShape(100, 32, 256, L=2)]
        grid = [(grid[0], "train"), (grid[1], "train"), (LayerShape(35, 16, 128), "infer"),
                (LayerShape(100, 64, 256), "infer")]
        cells = [(16, 128, "infer"), (16, 128, "train")]
    elif suite == "scaling":
        grid = [(LayerShape(T, B, H, L), mode) for T, B, H, L, mode in _scaling_grid()]
    else:
        grid = [(shape, mode) for mode in ("train", "infer") for shape in recurrent_grid.FULL]
        grid.append((MEMORY_SHAPE, "train"))
        cells = [(B, H, mode) for mode in ("infer", "train") for B, H in ((1, 256), (16, 128), (64, 256))]
    out = [BenchCase("lstm", shape.label(), mode, "torch.nn.LSTM", _layer_setup(shape, mode, device),
                     flops=flops.recurrent("lstm", shape.T, shape.B, shape.input_size, shape.H, shape.L, mode,
                                           2 if shape.bidirectional else 1),
                     dims=shape.dims(), memory=shape == MEMORY_SHAPE) for shape, mode in grid]
    if suite == "full":
        out += [BenchCase("lstm_bf16", shape.label(), mode, "torch.nn.LSTM bf16",
                          _layer_setup(shape, mode, device, torch.bfloat16),
                          flops=flops.recurrent("lstm", shape.T, shape.B, shape.H, shape.H, shape.L, mode),
                          dims=shape.dims(), note=BF16_NOTE[mode])
                for mode in ("infer", "train") for shape in recurrent_grid.BF16]
    out += [BenchCase("lstm_cell", f"one step B={B} I=H={H}", mode, "torch.nn.LSTMCell",
                      _cell_setup(B, H, mode, device), flops=flops.recurrent("lstm", 1, B, H, H, 1, mode),
                      dims=dict(B=B, H=H)) for B, H, mode in cells]
    return out
