"""Benchmark cases for the fused GRU and RNN layers against torch.nn.GRU / torch.nn.RNN
(the same weights, single layer, unidirectional), training step (forward + backward of
output and final state) and inference (no_grad forward). No case falls back to torch.
Flop counts: flops.recurrent with 3 gates (GRU) or 1 (RNN)."""
import itertools

import torch

from . import flops
from .harness import BenchCase

OPS = ("gru", "rnn")

SMALL = [("gru", "train", 35, 8, 128), ("gru", "infer", 100, 32, 128),
         ("rnn", "train", 100, 32, 128), ("rnn", "infer", 35, 8, 128)]
FULL_T, FULL_B, FULL_H = (35, 100, 200), (8, 32, 64), (64, 128, 256)
# Suite "scaling": T varied at B=16 H=128, then H at T=100 B=16.
SCALING = [(T, 16, 128) for T in (25, 50, 100, 200, 400)] + [(100, 16, H) for H in (64, 256, 512)]


def _modules(op, size, device):
    import fastseq.nn as fnn

    torch_cls, fast_cls = {"gru": (torch.nn.GRU, fnn.GRU), "rnn": (torch.nn.RNN, fnn.RNN)}[op]
    ref = torch_cls(size, size).to(device)
    fast = fast_cls(size, size).to(device)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _case(op, mode, T, B, H, device):
    ref_name = {"gru": "torch.nn.GRU", "rnn": "torch.nn.RNN(tanh)"}[op]

    def setup():
        ref, fast = _modules(op, H, device)
        x = torch.randn(T, B, H, device=device, requires_grad=(mode == "train"))

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
                (out.square().mean() + h.square().mean()).backward()
                return [out, h, x.grad] + [p.grad for p in module.parameters()]
            return run
        return runner(ref), runner(fast)

    return BenchCase(op=op, label=f"T={T} B={B} I={H} H={H}", mode=mode, reference=ref_name, setup=setup,
                     flops=flops.recurrent(op, T, B, H, H, 1, mode), dims=dict(T=T, B=B, H=H))


def cases(suite, device):
    if suite == "small":
        return [_case(op, mode, T, B, H, device) for op, mode, T, B, H in SMALL]
    if suite == "scaling":
        return [_case(op, mode, T, B, H, device)
                for op, mode, (T, B, H) in itertools.product(("gru", "rnn"), ("train", "infer"), SCALING)]
    return [_case(op, mode, T, B, H, device)
            for op, mode, T, B, H in itertools.product(("gru", "rnn"), ("train", "infer"), FULL_T, FULL_B, FULL_H)]
