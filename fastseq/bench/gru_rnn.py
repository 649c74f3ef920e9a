"""Benchmark cases for the fused GRU and RNN layers against torch.nn.GRU / torch.nn.RNN
(the same weights; the full suite's shapes are recurrent_grid.FULL: layers, directions,
batch_first), training step (forward + backward of output and final state) and inference
(no_grad forward). No case falls back to torch.
Flop counts: flops.recurrent with 3 gates (GRU) or 1 (RNN)."""
import itertools

import torch

from . import flops, recurrent_grid
from .harness import BenchCase
from .recurrent_grid import LayerShape

OPS = ("gru", "rnn", "gru_cell", "rnn_cell", "gru_bf16", "rnn_bf16")

SMALL = [("gru", "train", 35, 8, 128), ("gru", "infer", 100, 32, 128),
         ("rnn", "train", 100, 32, 128), ("rnn", "infer", 35, 8, 128)]
# Suite "scaling": T varied at B=16 H=128, then H at T=100 B=16.
SCALING = [(T, 16, 128) for T in (25, 50, 100, 200, 400)] + [(100, 16, H) for H in (64, 256, 512)]


def _modules(op, shape, device, dtype):
    import fastseq.nn as fnn

    torch_cls, fast_cls = {"gru": (torch.nn.GRU, fnn.GRU), "rnn": (torch.nn.RNN, fnn.RNN)}[op]
    kw = dict(num_layers=shape.L, bidirectional=shape.bidirectional, batch_first=shape.batch_first)
    ref = torch_cls(shape.input_size, shape.H, **kw).to(device, dtype)
    fast = fast_cls(shape.input_size, shape.H, **kw).to(device, dtype)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


# bfloat16 cases (full suite, recurrent_grid.BF16): what runs, as lstm.BF16_NOTE says.
BF16_NOTE = {"infer": "bfloat16 steps on oneDNN brgemm (AMX / AVX512-BF16) where the CPU has it, else float32 compute",
             "train": "bfloat16 steps on oneDNN brgemm forward and backward (float32 gate math, ws and dh) "
                      "where the CPU has it, else float32 compute"}


def _case(op, mode, shape, device, dtype=torch.float32):
    ref_name = {"gru": "torch.nn.GRU", "rnn": "torch.nn.RNN(tanh)"}[op]
    T, B, H, I = shape.T, shape.B, shape.H, shape.input_size
    bf16 = dtype == torch.bfloat16

    def setup():
        ref, fast = _modules(op, shape, device, dtype)
        size = (B, T, I) if shape.batch_first else (T, B, I)
        x = torch.randn(*size, device=device).to(dtype).requires_grad_(mode == "train")

        def runner(module):
            if mode == "infer":
                def run():
                    with torch.no_grad():
                        return module(x)
                return run

            def run():
                for p in module.parameters():
                    p.grad = None
                x.grad = None
                out, h = module(x)
                (out.float().square().mean() + h.float().square().mean()).backward()
                return [out, h, x.grad] + [p.grad for p in module.parameters()]
            return run
        return runner(ref), runner(fast)

    return BenchCase(op=op + "_bf16" if bf16 else op, label=shape.label(), mode=mode,
                     reference=ref_name + " bf16" if bf16 else ref_name, setup=setup,
                     flops=flops.recurrent(op, T, B, I, H, shape.L, mode, 2 if shape.bidirectional else 1),
                     dims=shape.dims(), note=BF16_NOTE[mode] if bf16 else "")


def _cell_case(op, mode, B, H, device):
    """One GRUCell / RNNCell step (a decoder's per-call cost): forward, or forward + the
    parameter gradients."""
    import fastseq.nn as fnn

    torch_cls, fast_cls, ref_name = {"gru_cell": (torch.nn.GRUCell, fnn.GRUCell, "torch.nn.GRUCell"),
                                     "rnn_cell": (torch.nn.RNNCell, fnn.RNNCell, "torch.nn.RNNCell(tanh)")}[op]

    def setup():
        torch.manual_seed(0)
        ref, fast = torch_cls(H, H).to(device), fast_cls(H, H).to(device)
        fast.load_state_dict(ref.state_dict())
        x, h = (torch.randn(B, H, device=device) for _ in range(2))

        def runner(module):
            params = list(module.parameters())
            if mode == "infer":
                def run():
                    with torch.no_grad():
                        return module(x, h)
                return run

            def run():
                return list(torch.autograd.grad(module(x, h).sum(), params))
            return run
        return runner(ref), runner(fast)

    base = op.split("_")[0]
    return BenchCase(op=op, label=f"one step B={B} I=H={H}", mode=mode, reference=ref_name, setup=setup,
                     flops=flops.recurrent(base, 1, B, H, H, 1, mode), dims=dict(B=B, H=H))


CELL_SHAPES = ((1, 256), (16, 128), (64, 256))


def cases(suite, device):
    if suite == "small":
        return [_case(op, mode, LayerShape(T, B, H), device) for op, mode, T, B, H in SMALL]
    if suite == "scaling":
        return [_case(op, mode, LayerShape(T, B, H), device)
                for op, mode, (T, B, H) in itertools.product(("gru", "rnn"), ("train", "infer"), SCALING)]
    return ([_case(op, mode, shape, device)
             for op, mode, shape in itertools.product(("gru", "rnn"), ("train", "infer"), recurrent_grid.FULL)]
            + [_cell_case(op, mode, B, H, device)
               for op, mode, (B, H) in itertools.product(("gru_cell", "rnn_cell"), ("infer", "train"), CELL_SHAPES)]
            + [_case(op, mode, shape, device, torch.bfloat16)
               for op, mode, shape in itertools.product(("gru", "rnn"), ("infer", "train"), recurrent_grid.BF16)])
