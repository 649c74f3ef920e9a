"""Benchmark suite "attention": fastseq.nn.functional.scaled_dot_product_attention against
torch.nn.functional.scaled_dot_product_attention, inference and training, peak memory
included. The published grid (full / causal / bool-masked, L = S = 256..2048, D = 32..128)
and, in the full suite, one case or two per feature rather than a cross product:
grouped-query attention, head dims 80 and 96, lengths that are not powers of two, cross
attention (L != S), key-padding masks (B, 1, 1, S) bool, additive float masks and decoding
(L = 1 against S = 512, 2048, 8192 cached keys, with and without GQA; inference only).

fastseq runs its fused kernels in every case (no fallback). torch runs whatever its
dispatcher picks: on CPU its flash kernel where that accepts the case, else its math kernel
(softmax(QK^T)V materialised); a case where torch's flash kernel refuses says so in its note
(probed once at suite build time with SDPBackend.FLASH_ATTENTION only). float32, no dropout
(with dropout_p > 0 torch leaves its flash kernel, so it is not timed). Flop counts:
flops.attention (a mask does not change the count, causal halves it).
"""
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from .. import nn as fnn
from . import flops
from .harness import BenchCase

OPS = ("attention",)

REFERENCE = "torch F.scaled_dot_product_attention"
MASKS = ("none", "bool", "kpm", "float")

# (B, H, L, D): L = S = 256 .. 2048, D = 32 .. 128, B*H shrinking as L grows to bound runtime.
FULL_SHAPES = [(b, h, L, d) for (b, h, L) in [(4, 8, 256), (2, 8, 512), (1, 8, 1024), (1, 4, 2048)]
               for d in (32, 64, 128)]
# The full suite's feature cases: (B, Hq, Hk, L, S, D, causal, mask, modes).
BOTH = ("infer", "train")
FEATURE_CASES = [
    (2, 8, 2, 512, 512, 64, True, "none", BOTH),      # grouped-query attention, 4 query heads a key head
    (2, 8, 1, 512, 512, 64, False, "kpm", BOTH),      # multi-query attention with key padding
    (2, 8, 8, 512, 512, 80, True, "none", BOTH),      # head dim 80
    (2, 8, 8, 512, 512, 96, False, "none", BOTH),     # head dim 96
    (2, 8, 8, 777, 777, 64, True, "none", BOTH),      # lengths not powers of two
    (4, 8, 8, 200, 200, 64, False, "bool", BOTH),
    (2, 8, 8, 256, 1024, 64, False, "none", BOTH),    # cross attention: short queries, long memory
    (2, 8, 8, 1024, 300, 64, False, "kpm", BOTH),     # cross attention: long queries, padded memory
    (4, 8, 8, 512, 512, 64, False, "kpm", BOTH),      # key-padding mask (B, 1, 1, S)
    (2, 8, 8, 512, 512, 64, False, "float", BOTH),    # additive float mask (L, S)
    (2, 8, 8, 1000, 1000, 64, True, "float", ("train",)),
] + [  # decoding: one new query row against the cache
    (8, 8, hk, 1, s, 64, False, "none", ("infer",)) for s in (512, 2048, 8192) for hk in (8, 2)
] + [(8, 8, 2, 1, 2048, 64, False, "kpm", ("infer",))]
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


def _make_mask(kind, B, L, S, gen):
    if kind == "none":
        return None
    if kind == "bool":
        # A banded-plus-random pattern in (L, S), broadcast over batch and heads.
        mask = torch.rand(L, S, generator=gen) > 0.3
        mask |= torch.eye(L, S, dtype=torch.bool)
        return mask
    if kind == "kpm":
        # Key padding as (B, 1, 1, S) bool: every sequence keeps at least 3/4 of its keys.
        lengths = torch.randint(3 * S // 4, S + 1, (B,), generator=gen)
        lengths[0] = S
        return (torch.arange(S)[None, :] < lengths[:, None])[:, None, None, :]
    # An additive float (L, S) bias (a relative-position-like ramp plus noise), no -inf.
    rel = (torch.arange(S)[None, :] - torch.arange(L)[:, None]).abs().float()
    return -0.05 * rel + 0.1 * torch.randn(L, S, generator=gen)


def _torch_refuses_flash(Hq, Hk, L, S, D, causal, mask_kind):
    """Whether torch's CPU flash kernel declines this configuration (it then runs its math
    kernel): a tiny probe of the same heads, lengths-relation, head dim and mask kind."""
    gen = torch.Generator().manual_seed(0)
    l, s = min(L, 8), min(S, 8) if S != L else min(L, 8)
    if S != L and s == l:
        s = l + 1
    q = torch.randn(1, Hq, l, D, generator=gen)
    k, v = (torch.randn(1, Hk, s, D, generator=gen) for _ in range(2))
    mask = _make_mask(mask_kind, 1, l, s, gen)
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.no_grad():
            F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                           enable_gqa=Hq != Hk)
        return False
    except RuntimeError:
        return True


def _make_setup(B, Hq, Hk, L, S, D, causal, mask_kind, mode, device):
    gqa = Hq != Hk

    def setup():
        gen = torch.Generator().manual_seed(0)
        q = torch.randn(B, Hq, L, D, generator=gen).to(device)
        k, v = (torch.randn(B, Hk, S, D, generator=gen).to(device) for _ in range(2))
        mask = _make_mask(mask_kind, B, L, S, gen)
        mask = None if mask is None else mask.to(device)
        grad = torch.randn(B, Hq, L, D, generator=gen).to(device)
        kwargs = dict(attn_mask=mask, is_causal=causal, **(dict(enable_gqa=True) if gqa else {}))

        def runner(fn):
            if mode == "infer":
                def run():
                    with torch.no_grad():
                        return fn(q, k, v, **kwargs)
                return run
            leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]

            def run():
                out = fn(*leaves, **kwargs)
                return (out, *torch.autograd.grad(out, leaves, grad))
            return run

        return runner(F.scaled_dot_product_attention), runner(fnn.functional.scaled_dot_product_attention)
    return setup


_MASK_LABEL = {"none": "", "bool": " +bool mask", "kpm": " +kpm (B,1,1,S)", "float": " +float mask"}
_MASK_NOTE = {"none": "", "bool": "mask (L,S) bool, read in place",
              "kpm": "key padding (B,1,1,S) bool, read in place", "float": "additive (L,S) float mask"}


def _case(B, Hq, Hk, L, S, D, causal, mask_kind, mode, device):
    heads = f"H={Hq}" if Hq == Hk else f"H={Hq}/{Hk}"
    lengths = f"L=S={L}" if L == S else f"L={L} S={S}"
    kind = "decode" if L == 1 else ("causal" if causal else "full")
    label = f"B={B} {heads} {lengths} D={D} {kind}{_MASK_LABEL[mask_kind]}"
    notes = [n for n in (_MASK_NOTE[mask_kind], "GQA" if Hq != Hk else "") if n]
    if _torch_refuses_flash(Hq, Hk, L, S, D, causal, mask_kind):
        notes.append("torch: math kernel (its flash kernel refuses this case)")
    return BenchCase(op="attention", label=label, mode=mode, reference=REFERENCE,
                     setup=_make_setup(B, Hq, Hk, L, S, D, causal, mask_kind, mode, device),
                     note="; ".join(notes), memory=True,
                     flops=flops.attention(B, Hq, L, S, D, causal, mode),
                     dims=dict(B=B, H=Hq, L=L, D=D, **({} if S == L else dict(S=S)),
                               **({} if Hq == Hk else dict(Hk=Hk))))


def cases(suite, device):
    if suite == "small":
        return [_case(B, H, H, L, L, D, causal, "bool" if masked else "none", mode, device)
                for (B, H, L, D, causal, masked, mode) in SMALL_CASES]
    if suite == "scaling":
        return [_case(1, 8, 8, L, L, 64, False, "none", mode, device)
                for mode in ("infer", "train") for L in SCALING_L]
    out = []
    for mode in ("infer", "train"):
        for (B, H, L, D) in FULL_SHAPES:
            for causal, mask in ((False, "none"), (True, "none"), (False, "bool")):
                out.append(_case(B, H, H, L, L, D, causal, mask, mode, device))
    for (B, Hq, Hk, L, S, D, causal, mask, modes) in FEATURE_CASES:
        out += [_case(B, Hq, Hk, L, S, D, causal, mask, mode, device) for mode in modes]
    return out
