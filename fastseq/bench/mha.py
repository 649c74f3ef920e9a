"""Benchmarks fastseq.nn.MultiheadAttention and TransformerEncoderLayer against torch.nn's
(self-attention with a key padding mask, batch_first, need_weights True and False; in the
full suite also cross attention over a longer memory, head dim 96, and an additive float
attn_mask with a length that is not a power of two).

torch's reference runs whatever path torch picks itself: in "infer" (eval, no_grad) that is
its native fast path (_native_multi_head_attention / _transformer_encoder_layer_fwd).
Flop counts: flops.transformer_block (no feed-forward for MultiheadAttention alone).
No "scaling" cases: the attention suite's scaling cases cover L.
"""
import itertools

import torch

from . import flops
from .harness import BenchCase

OPS = ("mha", "encoder_layer")


def _padding_mask(B, L, device):
    # Every sequence keeps at least 3/4 of its length: a typical batch of padded sentences.
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(3 * L // 4, L + 1, (B,), generator=g)
    lengths[0] = L
    return (torch.arange(L)[None, :] >= lengths[:, None]).to(device)


def _pair(make_ref, make_fast, device):
    ref = make_ref().to(device)
    fast = make_fast().to(device)
    fast.load_state_dict(ref.state_dict(), strict=True)
    return ref, fast


def _runner(module, call, x, mode):
    """Returns fn() running one forward (+ backward in train mode) and returning what to
    compare: the outputs, then the gradients of the input and every parameter."""
    params = list(module.parameters())
    if mode == "infer":
        module.eval()

        def infer():
            with torch.no_grad():
                return call(module, x)
        return infer
    module.train()
    x = x.detach().requires_grad_()
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(x.device)

    def train():
        outs = call(module, x)
        out = outs[0] if isinstance(outs, tuple) else outs
        grads = torch.autograd.grad(out, [x] + params, grad_out)
        return outs, grads
    return train


def mha_case(B, L, E, H, need_weights, mode, kpm, device, S=None, float_mask=False):
    """Self-attention over x (B, L, E); with S, cross attention of x over a memory (B, S, E)
    (the padding mask then pads the memory); float_mask adds an additive (L, S) attn_mask."""
    cross = S is not None
    S = S if cross else L

    def setup():
        from .. import nn as fnn
        ref, fast = _pair(lambda: torch.nn.MultiheadAttention(E, H, dropout=0.0, batch_first=True),
                          lambda: fnn.MultiheadAttention(E, H, dropout=0.0, batch_first=True), device)
        x = torch.randn(B, L, E, device=device)
        memory = torch.randn(B, S, E, device=device) if cross else None
        mask = _padding_mask(B, S, device) if kpm else None
        g = torch.Generator().manual_seed(2)
        bias = (-0.05 * (torch.arange(S)[None, :] - torch.arange(L)[:, None]).abs().float()
                + 0.1 * torch.randn(L, S, generator=g)).to(device) if float_mask else None

        def call(m, inp):
            kv = memory if cross else inp
            return m(inp, kv, kv, key_padding_mask=mask, need_weights=need_weights, attn_mask=bias)
        return _runner(ref, call, x, mode), _runner(fast, call, x, mode)

    label = (f"B={B} L={L}{f' S={S} cross' if cross else ''} E={E} H={H} "
             f"weights={'yes' if need_weights else 'no'}{' kpm' if kpm else ''}"
             f"{' +float mask' if float_mask else ''}")
    note = "; ".join(n for n in ("queries over a memory: q from x, k/v from it" if cross else "",
                                 "additive (L,S) float attn_mask" if float_mask else "") if n)
    gemms = 2.0 * B * E * E * (2 * L + 2 * S)  # q and out projections over L, k and v over S
    return BenchCase("mha", label, mode, "torch.nn.MultiheadAttention", setup, note=note,
                     memory=True,
                     flops=(flops.transformer_block(B, L, E, 0, False, mode) if not cross else
                            gemms * (flops.GEMM_TRAIN if mode == "train" else 1.0)
                            + flops.attention(B, 1, L, S, E, False, mode)),
                     dims=dict(B=B, L=L, E=E, H=H, **(dict(S=S) if cross else {})))


def encoder_layer_case(B, L, E, H, mode, device):
    def setup():
        from .. import nn as fnn
        args = (E, H, 4 * E, 0.0)
        ref, fast = _pair(lambda: torch.nn.TransformerEncoderLayer(*args, batch_first=True),
                          lambda: fnn.TransformerEncoderLayer(*args, batch_first=True), device)
        x = torch.randn(B, L, E, device=device)
        mask = _padding_mask(B, L, device)

        def call(m, inp):
            return m(inp, src_key_padding_mask=mask)
        return _runner(ref, call, x, mode), _runner(fast, call, x, mode)

    return BenchCase("encoder_layer", f"B={B} L={L} E={E} H={H} ff={4 * E} kpm", mode,
                     "torch.nn.TransformerEncoderLayer", setup, memory=True,
                     flops=flops.transformer_block(B, L, E, 4 * E, False, mode), dims=dict(B=B, L=L, E=E, H=H))


def cases(suite, device):
    if suite == "small":
        return [mha_case(8, 256, 256, 4, True, "train", True, device),
                mha_case(8, 256, 256, 4, True, "infer", True, device),
                encoder_layer_case(8, 256, 256, 4, "train", device)]
    if suite == "scaling":
        return []
    out = []
    for L, (E, H), nw, mode in itertools.product((256, 512, 1024), ((256, 4), (512, 8)),
                                                 (True, False), ("train", "infer")):
        out.append(mha_case(8, L, E, H, nw, mode, True, device))
    for L, mode in itertools.product((256, 1024), ("train", "infer")):
        out.append(mha_case(8, L, 256, 4, True, mode, False, device))
    for L, (E, H), mode in itertools.product((256, 512), ((256, 4), (512, 8)), ("train", "infer")):
        out.append(encoder_layer_case(8, L, E, H, mode, device))
    # One case a feature (attention suite has the kernel-level grid of each).
    for mode in ("train", "infer"):
        out.append(mha_case(8, 128, 256, 4, False, mode, True, device, S=512))   # cross attention
        out.append(mha_case(8, 256, 384, 4, False, mode, True, device))          # head dim 96
        out.append(mha_case(8, 300, 256, 4, False, mode, False, device, float_mask=True))
    return out
