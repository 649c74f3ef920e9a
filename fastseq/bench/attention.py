"""Benchmark suite "attention": fastseq.nn.functional.scaled_dot_product_attention against
torch.nn.functional.scaled_dot_product_attention (on CPU, torch's flash kernel), full and
causal, with and without a bool attn_mask, inference and training, peak memory included.

Both sides run the same fused-kernel class (no fallback on either side): float32, no
dropout (with dropout_p > 0 torch leaves its flash kernel for the math path; fastseq keeps
its fused kernels, so dropout is not a like-for-like comparison and is not timed here).
Flop counts: flops.attention (the mask does not change the count, causal halves it).
"""
import torch
import torch.nn.functional as F

from .. import nn as fnn
from . import flops
from .harness import BenchCase

OPS = ("attention",)

REFERENCE = "torch F.scaled_dot_product_attention"

# (B, H, L, D): L = S = 256 .. 2048, D = 32 .. 128, B*H shrinking as L grows to bound runtime.
FULL_SHAPES = [(b, h, L, d) for (b, h, L) in [(4, 8, 256), (2, 8, 512), (1, 8, 1024), (1, 4, 2048)]
               for d in (32, 64, 128)]
# Suite "scaling": L = S varied at B=1 H=8 D=64, full attention.
SCALING_L = (256, 512, 1024, 2048)
SMALL_CASES = [  # (B, H, L, D, causal, masked, mode)
    (2, 8, 512, 64, False, False, "infer"),
    (2, 8, 512, 64, True, False, "infer"),
    (2, 4, 256, 64, False, True, "infer"),
    (2, 4, 256, 32, False, False, "train"),
    (2, 4, 512, 64, True, False, "train"),
    (2, 4, 256, 64, False, True, "train"),
]


def _make_setup(B, H, L, D, causal, masked, mode, device):
    def setup():
        gen = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(B, H, L, D, generator=gen).to(device) for _ in range(3))
        mask = None
        if masked:
            # A banded-plus-random pattern in (L, S), broadcast over batch and heads.
            mask = torch.rand(L, L, generator=gen) > 0.3
            mask |= torch.eye(L, dtype=torch.bool)
            mask = mask.to(device)
        grad = torch.randn(B, H, L, D, generator=gen).to(device)

        def runner(fn):
            if mode == "infer":
                def run():
                    with torch.no_grad():
                        return fn(q, k, v, attn_mask=mask, is_causal=causal)
                return run
            leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]

            def run():
                out = fn(*leaves, attn_mask=mask, is_causal=causal)
                return (out, *torch.autograd.grad(out, leaves, grad))
            return run

        return runner(F.scaled_dot_product_attention), runner(fnn.functional.scaled_dot_product_attention)
    return setup


def _case(B, H, L, D, causal, masked, mode, device):
    label = f"B={B} H={H} L=S={L} D={D} {'causal' if causal else 'full'}{' +bool mask' if masked else ''}"
    note = "mask (L,S) bool, read in place" if masked else ""
    return BenchCase(op="attention", label=label, mode=mode, reference=REFERENCE,
                     setup=_make_setup(B, H, L, D, causal, masked, mode, device), note=note,
                     memory=True, flops=flops.attention(B, H, L, L, D, causal, mode),
                     dims=dict(B=B, H=H, L=L, D=D))


def cases(suite, device):
    if suite == "small":
        return [_case(*c, device) for c in SMALL_CASES]
    if suite == "scaling":
        return [_case(1, 8, L, 64, False, False, mode, device) for mode in ("infer", "train") for L in SCALING_L]
    out = []
    for mode in ("infer", "train"):
        for (B, H, L, D) in FULL_SHAPES:
            for causal, masked in ((False, False), (True, False), (False, True)):
                out.append(_case(B, H, L, D, causal, masked, mode, device))
    return out
