"""fastseq.nn.functional.scaled_dot_product_attention(_with_weights) against torch's own
scaled_dot_product_attention (math kernel, float64) for outputs and every gradient."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import fastseq
import fastseq.nn.functional as FF
from fastseq.ops import attention as ops


def torch_sdpa(*args, **kwargs):
    """torch's math kernel: the float64 reference (and the bf16/fp16 baseline)."""
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(*args, **kwargs)


def leaves(*shapes, dtype=torch.float64, device="cpu"):
    return [torch.randn(s, dtype=dtype, device=device, requires_grad=True) for s in shapes]


def check_against_torch(q, k, v, atol=1e-10, **kwargs):
    """fastseq vs torch's math kernel in float64: output and grads of q, k, v (and of a float
    attn_mask that requires grad)."""
    mask = kwargs.get("attn_mask")
    inputs = [q, k, v] + ([mask] if isinstance(mask, torch.Tensor) and mask.requires_grad else [])
    out = FF.scaled_dot_product_attention(q, k, v, **kwargs)
    ref = torch_sdpa(q, k, v, **kwargs)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=atol, rtol=0)
    g = torch.randn_like(ref)
    got = torch.autograd.grad(out, inputs, g)
    want = torch.autograd.grad(ref, inputs, g)
    for name, a, b in zip(["query", "key", "value", "attn_mask"], got, want):
        torch.testing.assert_close(a, b, atol=atol, rtol=0, msg=lambda m: f"grad of {name}: {m}")


SHAPES = [  # B, H, L, S, E, Ev
    (2, 3, 5, 7, 8, 8),
    (1, 1, 1, 1, 16, 16),
    (2, 2, 1, 13, 32, 32),
    (1, 2, 13, 1, 32, 24),
    (2, 1, 67, 131, 64, 64),
    (1, 2, 37, 300, 128, 128),
    (1, 1, 300, 29, 24, 40),
    (2, 4, 1, 600, 24, 64),   # a decoding step: few query rows take the unpacked-key path
    (1, 3, 9, 290, 72, 8),
]


@pytest.mark.parametrize("B,H,L,S,E,Ev", SHAPES)
@pytest.mark.parametrize("causal", [False, True])
def test_matches_torch_float64(B, H, L, S, E, Ev, causal):
    q, k, v = leaves((B, H, L, E), (B, H, S, E), (B, H, S, Ev))
    check_against_torch(q, k, v, is_causal=causal)


@pytest.mark.parametrize("mask_shape", [(29, 301), (2, 1, 1, 301), (1, 3, 29, 301), (29, 1), (301,)])
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_masks_broadcast(mask_shape, kind):
    q, k, v = leaves((2, 3, 29, 16), (2, 3, 301, 16), (2, 3, 301, 16))
    if kind == "bool":
        mask = torch.rand(mask_shape) > 0.3
        mask[..., 0] = True  # keep every row alive: torch's math kernel gives NaN otherwise
    else:
        mask = torch.randn(mask_shape, dtype=torch.float64, requires_grad=True)
    check_against_torch(q, k, v, attn_mask=mask)


def test_float_mask_with_minus_inf_entries():
    q, k, v = leaves((1, 2, 9, 8), (1, 2, 11, 8), (1, 2, 11, 8))
    mask = torch.randn(9, 11, dtype=torch.float64)
    mask[:, 3:6] = float("-inf")
    check_against_torch(q, k, v, attn_mask=mask.requires_grad_())


@pytest.mark.parametrize("L,S", [(5, 9), (9, 5), (70, 300), (300, 70)])
def test_causal_with_l_not_s(L, S):
    q, k, v = leaves((2, 2, L, 16), (2, 2, S, 16), (2, 2, S, 8))
    check_against_torch(q, k, v, is_causal=True)


def test_causal_combined_with_mask_applies_both():
    # torch's default CPU kernel accepts both and applies both; fastseq does the same.
    q, k, v = leaves((1, 2, 20, 8), (1, 2, 20, 8), (1, 2, 20, 8))
    mask = torch.rand(20, 20) > 0.5
    mask[:, 0] = True
    both = mask & torch.ones(20, 20, dtype=torch.bool).tril()
    out = FF.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True)
    torch.testing.assert_close(out, torch_sdpa(q, k, v, attn_mask=both), atol=1e-12, rtol=0)
    ref32 = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask,
                                           is_causal=True)
    torch.testing.assert_close(out.float(), ref32, atol=1e-5, rtol=0)


def test_custom_scale():
    q, k, v = leaves((2, 2, 7, 8), (2, 2, 9, 8), (2, 2, 9, 8))
    check_against_torch(q, k, v, scale=0.37)
    check_against_torch(q, k, v, scale=2.5, is_causal=True)


@pytest.mark.parametrize("Hq,Hk", [(6, 2), (6, 3), (4, 1), (5, 5)])
def test_grouped_query_attention(Hq, Hk):
    q, k, v = leaves((2, Hq, 11, 16), (2, Hk, 17, 16), (2, Hk, 17, 12))
    check_against_torch(q, k, v, enable_gqa=True)
    check_against_torch(q, k, v, enable_gqa=True, is_causal=True)


@pytest.mark.parametrize("q_shape,kv_lead", [
    ((7, 8), ()),               # rank 2: (L, E)
    ((3, 7, 8), (3,)),          # rank 3: (H, L, E)
    ((2, 3, 7, 8), (2, 3)),     # rank 4
    ((2, 2, 3, 7, 8), (2, 2, 3)),  # two batch dims
    ((2, 2, 3, 7, 8), (2, 1, 3)),  # broadcast batch dim of key/value
    ((2, 3, 7, 8), (1, 3)),
])
def test_batch_ranks(q_shape, kv_lead):
    q, = leaves(q_shape)
    k, v = leaves(kv_lead + (5, 8), kv_lead + (5, 6))
    check_against_torch(q, k, v)


def test_non_contiguous_inputs():
    # (B, L, H, E) storage viewed as (B, H, L, E), as MultiheadAttention produces.
    base_q, base_k, base_v = leaves((2, 13, 3, 16), (2, 19, 3, 16), (2, 19, 3, 32))
    q, k, v = base_q.transpose(1, 2), base_k.transpose(1, 2), base_v.transpose(1, 2)
    check_against_torch(q, k, v)
    # Strided feature dim as well.
    qq, = leaves((2, 3, 13, 32))
    check_against_torch(qq[..., ::2], k, v)
    mask = (torch.rand(19, 13) > 0.2).t()  # non-contiguous mask
    mask[:, 0] = True
    check_against_torch(q, k, v, attn_mask=mask)


def test_zero_length():
    q, k, v = leaves((2, 2, 0, 4), (2, 2, 5, 4), (2, 2, 5, 4))
    check_against_torch(q, k, v)
    q, k, v = leaves((2, 2, 3, 4), (2, 2, 0, 4), (2, 2, 0, 4))
    out = FF.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_fully_masked_rows_match_torch_cpu(kind):
    # torch 2.13's CPU kernel gives such rows a zero output and zero gradients.
    q, k, v = leaves((1, 2, 4, 8), (1, 2, 6, 8), (1, 2, 6, 8), dtype=torch.float32)
    keep = torch.ones(4, 6, dtype=torch.bool)
    keep[2] = False
    mask = keep if kind == "bool" else torch.zeros(4, 6).masked_fill(~keep, float("-inf"))
    out = FF.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert torch.all(out[:, :, 2] == 0)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, [q, k, v], g), torch.autograd.grad(ref, [q, k, v], g)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    _, w = FF.scaled_dot_product_attention_with_weights(q, k, v, attn_mask=mask)
    assert torch.all(w[:, :, 2] == 0)


def test_float32_close_to_float64_reference():
    q, k, v = leaves((2, 4, 100, 64), (2, 4, 150, 64), (2, 4, 150, 64), dtype=torch.float32)
    out = FF.scaled_dot_product_attention(q, k, v, is_causal=True)
    ref = torch_sdpa(q.double(), k.double(), v.double(), is_causal=True)
    torch.testing.assert_close(out.double(), ref, atol=2e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
def test_reduced_precision_within_twice_torchs_error(dtype, causal):
    q64, k64, v64 = leaves((2, 3, 45, 32), (2, 3, 70, 32), (2, 3, 70, 24))
    mask = torch.rand(45, 70) > 0.2 if not causal else None
    if mask is not None:
        mask[:, 0] = True
    ref = torch_sdpa(q64, k64, v64, attn_mask=mask, is_causal=causal)
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, [q64, k64, v64], g)
    low = [t.detach().to(dtype).requires_grad_() for t in (q64, k64, v64)]
    ours = FF.scaled_dot_product_attention(*low, attn_mask=mask, is_causal=causal)
    theirs = F.scaled_dot_product_attention(*low, attn_mask=mask, is_causal=causal)
    assert ours.dtype == dtype
    our_grads = torch.autograd.grad(ours, low, g.to(dtype))
    their_grads = torch.autograd.grad(theirs, low, g.to(dtype))
    for name, o, t, r in zip(["out", "dq", "dk", "dv"], [ours, *our_grads], [theirs, *their_grads],
                             [ref, *ref_grads]):
        err = (o.double() - r).abs().max().item()
        torch_err = (t.double() - r).abs().max().item()
        assert err <= 2 * torch_err + 1e-6, f"{name}: fastseq error {err} vs torch {torch_err}"


def test_gradcheck_float64():
    q, k, v = leaves((1, 2, 5, 4), (1, 2, 6, 4), (1, 2, 6, 3))
    mask = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    f = lambda q, k, v, m: FF.scaled_dot_product_attention(q, k, v, attn_mask=m)
    assert torch.autograd.gradcheck(f, (q, k, v, mask))
    f = lambda q, k, v: FF.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.autograd.gradcheck(f, (q, k, v))
    qg, = leaves((1, 4, 3, 4))
    f = lambda q, k, v: FF.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    assert torch.autograd.gradcheck(f, (qg, k, v))


def test_gradcheck_float64_with_weights():
    q, k, v = leaves((1, 2, 4, 3), (1, 2, 5, 3), (1, 2, 5, 2))
    mask = torch.rand(4, 5) > 0.3
    mask[:, 0] = True
    f = lambda q, k, v: FF.scaled_dot_product_attention_with_weights(q, k, v, attn_mask=mask)
    assert torch.autograd.gradcheck(f, (q, k, v))


@pytest.mark.filterwarnings("ignore:Input #")
def test_gradcheck_float32():
    q, k, v = leaves((1, 2, 4, 4), (1, 2, 5, 4), (1, 2, 5, 3), dtype=torch.float32)
    f = lambda q, k, v: FF.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-2, atol=2e-2, rtol=2e-2)


def reference_with_weights(q, k, v, mask=None, causal=False, scale=None):
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = q @ k.transpose(-2, -1) * scale
    if causal:
        s = s.masked_fill(~torch.ones(s.shape[-2:], dtype=torch.bool).tril(), float("-inf"))
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask
    w = torch.softmax(s, dim=-1)
    return w @ v, w


@pytest.mark.parametrize("causal", [False, True])
def test_with_weights_output_weights_and_grads(causal):
    q, k, v = leaves((2, 3, 9, 8), (2, 3, 14, 8), (2, 3, 14, 5))
    mask = None if causal else torch.rand(9, 14) > 0.3
    if mask is not None:
        mask[:, 1] = True
    out, w = FF.scaled_dot_product_attention_with_weights(q, k, v, attn_mask=mask, is_causal=causal)
    ref_out, ref_w = reference_with_weights(q, k, v, mask, causal)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=0)
    torch.testing.assert_close(w, ref_w, atol=1e-12, rtol=0)
    go, gw = torch.randn_like(out), torch.randn_like(w)
    got = torch.autograd.grad((out, w), (q, k, v), (go, gw))
    want = torch.autograd.grad((ref_out, ref_w), (q, k, v), (go, gw))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=0)
    plain = FF.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    torch.testing.assert_close(out, plain, atol=1e-13, rtol=0)


# ---- dropout ----

def test_dropout_statistics():
    p = 0.3
    q, k, v = leaves((4, 4, 64, 16), (4, 4, 96, 16), (4, 4, 96, 16), dtype=torch.float32)
    with torch.no_grad():
        _, w = FF.scaled_dot_product_attention_with_weights(q, k, v, dropout_p=p)
        _, w0 = FF.scaled_dot_product_attention_with_weights(q, k, v)
    dropped = (w == 0).double().mean().item()
    assert abs(dropped - p) < 0.01, dropped  # 393k Bernoulli draws: std 7e-4
    kept = w != 0
    torch.testing.assert_close(w[kept], (w0 / (1 - p))[kept], atol=1e-6, rtol=1e-5)
    # Independent across rows and heads: the drop pattern of two heads is uncorrelated.
    a, b = (w[0, 0] == 0).double().flatten(), (w[0, 1] == 0).double().flatten()
    corr = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
    assert abs(corr) < 0.05


def test_dropout_is_unbiased():
    q, k, v = leaves((1, 2, 8, 8), (1, 2, 12, 8), (1, 2, 12, 8), dtype=torch.float32)
    with torch.no_grad():
        clean = FF.scaled_dot_product_attention(q, k, v)
        mean = sum(FF.scaled_dot_product_attention(q, k, v, dropout_p=0.5) for _ in range(2000)) / 2000
    assert (mean - clean).abs().max().item() < 0.08


def test_dropout_reproducible_and_backward_consistent():
    p = 0.25
    q, k, v = leaves((2, 2, 11, 8), (2, 2, 13, 8), (2, 2, 13, 6))
    torch.manual_seed(123)
    out = FF.scaled_dot_product_attention(q, k, v, dropout_p=p)
    torch.manual_seed(123)
    out_w, w = FF.scaled_dot_product_attention_with_weights(q, k, v, dropout_p=p)
    torch.testing.assert_close(out, out_w, atol=1e-13, rtol=0)
    torch.testing.assert_close(out, w @ v, atol=1e-12, rtol=0)
    # Backward vs autograd through softmax with the same (fixed) drop mask.
    keep = (w != 0).detach()
    _, probs = reference_with_weights(q, k, v)
    ref = (probs * keep / (1 - p)) @ v
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    g = torch.randn_like(out)
    want = torch.autograd.grad(ref, (q, k, v), g, retain_graph=True)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), g), want):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=0)
    # Gradient through the returned (dropped) weights as well.
    gw = torch.randn_like(w)
    got = torch.autograd.grad((out_w, w), (q, k, v), (g, gw))
    want = torch.autograd.grad((ref, probs * keep / (1 - p)), (q, k, v), (g, gw))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=0)


# ---- custom-op machinery ----

def test_opcheck():
    # The ops are the traceable kernels; their autograd is fastseq.ops.attention._Attention
    # (one formula, eager and compiled: test_torch_compile_fullgraph), so no input needs grad.
    q, k, v = (t.detach() for t in leaves((2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 4),
                                          dtype=torch.float32))
    mask = torch.randn(2, 3, 5, 7)
    for args in [(q, k, v, None, 0.0, False, 0.35), (q, k, v, mask, 0.0, False, 0.35),
                 (q, k, v, mask > 0, 0.0, True, 0.35)]:
        torch.library.opcheck(ops.attention_forward, args)
        torch.library.opcheck(ops.attention_forward_with_weights, args)
    out, lse, seed, w = ops.attention_forward_with_weights(q, k, v, mask, 0.0, False, 0.35)
    go = torch.randn_like(out)
    torch.library.opcheck(ops.attention_backward,
                          (go, None, None, q, k, v, out, lse, mask, 0.0, False, 0.35, seed, True))
    torch.library.opcheck(ops.attention_backward,
                          (go, torch.randn_like(w), w, q, k, v, out, lse, mask > 0, 0.0, False, 0.35,
                           seed, False))


def test_torch_compile_fullgraph():
    q, k, v = leaves((2, 2, 9, 8), (2, 2, 9, 8), (2, 2, 9, 8), dtype=torch.float32)
    mask = torch.rand(9, 9) > 0.3
    mask[:, 0] = True

    def f(q, k, v):
        out, w = FF.scaled_dot_product_attention_with_weights(q, k, v, attn_mask=mask)
        return FF.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=0.1) + out, w

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.manual_seed(5)
    out_c, w_c = compiled(q, k, v)
    torch.manual_seed(5)
    out_e, w_e = f(q, k, v)
    torch.testing.assert_close(out_c, out_e)
    torch.testing.assert_close(w_c, w_e)
    gc = torch.autograd.grad(out_c.sum() + w_c.sum(), (q, k, v))
    ge = torch.autograd.grad(out_e.sum() + w_e.sum(), (q, k, v))
    for a, b in zip(gc, ge):
        torch.testing.assert_close(a, b)


def test_public_names():
    # In a fresh interpreter: `import fastseq.nn as nn` alone must give fastseq's functional
    # (defined in fastseq.nn.functional: the fused op behind the torch-path switch).
    import subprocess
    import sys
    code = ("import fastseq.nn as nn, torch.nn.functional as F; "
            "assert nn.functional.scaled_dot_product_attention.__module__ == 'fastseq.nn.functional'; "
            "assert nn.functional.scaled_dot_product_attention_with_weights is not None; "
            "assert nn.functional.softmax is F.softmax")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- CUDA (skipped without a GPU and a CUDA build) ----

HAS_CUDA = torch.cuda.is_available() and fastseq._C.built_with_cuda()


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and a CUDA build of fastseq")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_matches_torch(dtype, causal):
    device = torch.device("cuda")
    q64, k64, v64 = leaves((2, 4, 77, 64), (2, 4, 130, 64), (2, 4, 130, 64), device=device)
    mask = None if causal else torch.rand(77, 130, device=device) > 0.2
    if mask is not None:
        mask[:, 0] = True
    ref = torch_sdpa(q64, k64, v64, attn_mask=mask, is_causal=causal)
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, [q64, k64, v64], g)
    low = [t.detach().to(dtype).requires_grad_() for t in (q64, k64, v64)]
    ours = FF.scaled_dot_product_attention(*low, attn_mask=mask, is_causal=causal)
    theirs = F.scaled_dot_product_attention(*low, attn_mask=mask, is_causal=causal)
    our_grads = torch.autograd.grad(ours, low, g.to(dtype))
    their_grads = torch.autograd.grad(theirs, low, g.to(dtype))
    for o, t, r in zip([ours, *our_grads], [theirs, *their_grads], [ref, *ref_grads]):
        err = (o.double() - r).abs().max().item()
        torch_err = (t.double() - r).abs().max().item()
        assert err <= 2 * torch_err + 1e-5


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and a CUDA build of fastseq")
def test_cuda_float64_is_a_clear_error():
    # The CPU runs float64; the CUDA kernels have none: a sentence, not a failed launch.
    q = torch.randn(1, 2, 4, 8, dtype=torch.float64, device="cuda")
    with pytest.raises(RuntimeError, match=r"query is float64 on cuda:\d+; the CUDA kernels support "
                                           r"float32, bfloat16 and float16 \(float64 runs on the CPU\)"):
        FF.scaled_dot_product_attention(q, q, q)


def _gemm_paths():
    paths = ["auto", "blas"]
    try:  # tile_gemm.h exists in AVX-512 builds only; the setter says so otherwise
        with fastseq.ops.attention_settings(gemm="tile"):
            paths.append("tile")
    except ValueError as e:
        assert "AVX-512" in str(e)
    return paths


# Each GEMM path (auto: brgemm for float32 where oneDNN serves, tile_gemm.h for float64; blas:
# sgemm_/dgemm_; tile: tile_gemm.h for float32 too), with the default tiles and with tiles small
# enough that every kernel walks several query and key tiles (and a ragged last one).
@pytest.mark.parametrize("gemm", _gemm_paths())
@pytest.mark.parametrize("tiles", ["default", "small"])
@pytest.mark.parametrize("L,S,E,Ev,causal,gqa", [(37, 300, 64, 40, False, False),
                                                 (70, 45, 16, 16, True, True)])
def test_gemm_paths_and_tiles_match_torch(gemm, tiles, L, S, E, Ev, causal, gqa):
    small = dict(block_q=16, block_k=32, block_q_bwd=8, block_k_bwd=24, br_block_q=16,
                 br_block_k=48, br_block_q_bwd=16, br_block_k_bwd=32)
    changes = dict(gemm=gemm, **(small if tiles == "small" else {}))
    torch.manual_seed(0)
    q = torch.randn(2, 4, L, E, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 2 if gqa else 4, S, E, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 2 if gqa else 4, S, Ev, dtype=torch.float64, requires_grad=True)
    mask = None if causal else torch.rand(L, S) > 0.2
    if mask is not None:
        mask[:, 0] = True
    kw = dict(attn_mask=mask, is_causal=causal, enable_gqa=gqa)
    ref = torch_sdpa(q, k, v, **kw)
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    with fastseq.ops.attention_settings(**changes) as now:
        assert {key: now[key] for key in changes} == changes
        out = FF.scaled_dot_product_attention(q, k, v, **kw)
        grads = torch.autograd.grad(out, (q, k, v), g)
        q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
        o32 = FF.scaled_dot_product_attention(q32, k32, v32, **kw)
        grads32 = torch.autograd.grad(o32, (q32, k32, v32), g.float())
        ow32, w32 = FF.scaled_dot_product_attention_with_weights(q32, k32, v32, **kw)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    torch.testing.assert_close(o32.double(), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(ow32.double(), ref, atol=1e-5, rtol=0)
    for a, b in zip(grads32, ref_grads):
        torch.testing.assert_close(a.double(), b, atol=1e-4, rtol=0)


def test_attention_settings_restored_after_block():
    before = fastseq._C.attention_settings()
    with pytest.raises(KeyError):
        with fastseq.ops.attention_settings(gemm="blas", block_k=17) as inside:
            assert inside["gemm"] == "blas" and inside["block_k"] == 17
            assert fastseq._C.attention_settings() == inside
            raise KeyError("leaves the block")
    assert fastseq._C.attention_settings() == before


def test_with_weights_gqa_float_mask_grad():
    q, k, v = leaves((2, 4, 7, 8), (2, 2, 10, 8), (2, 2, 10, 6))
    mask = torch.randn(2, 1, 7, 10, dtype=torch.float64, requires_grad=True)
    out, w = FF.scaled_dot_product_attention_with_weights(q, k, v, attn_mask=mask, enable_gqa=True)
    kk, vv = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    ref_out, ref_w = reference_with_weights(q, kk, vv, mask)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=0)
    torch.testing.assert_close(w, ref_w, atol=1e-12, rtol=0)
    go, gw = torch.randn_like(out), torch.randn_like(w)
    got = torch.autograd.grad((out, w), (q, k, v, mask), (go, gw))
    want = torch.autograd.grad((ref_out, ref_w), (q, k, v, mask), (go, gw))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=0)


def test_with_weights_bfloat16_close_to_reference():
    q, k, v = leaves((1, 2, 33, 16), (1, 2, 65, 16), (1, 2, 65, 16))
    out, w = FF.scaled_dot_product_attention_with_weights(
        q.bfloat16(), k.bfloat16(), v.bfloat16(), is_causal=True)
    ref_out, ref_w = reference_with_weights(q, k, v, causal=True)
    assert out.dtype == w.dtype == torch.bfloat16
    torch.testing.assert_close(w.double(), ref_w, atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(out.double(), ref_out, atol=3e-2, rtol=1e-2)


@pytest.mark.parametrize("Hq,Hk", [(1, 1), (4, 1)])
def test_backward_split_over_key_tiles(Hq, Hk):
    # Fewer (batch, key head) units than threads: the backward splits each unit's key tiles
    # over threads and reduces dQ partial sums.
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        q, k, v = leaves((1, Hq, 45, 16), (1, Hk, 700, 16), (1, Hk, 700, 8))
        check_against_torch(q, k, v, enable_gqa=True)
        check_against_torch(q, k, v, enable_gqa=True, is_causal=True)
        mask = torch.randn(45, 700, dtype=torch.float64, requires_grad=True)
        check_against_torch(q, k, v, enable_gqa=True, attn_mask=mask)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("causal", [False, True])
def test_float32_backward_split_units_share_a_thread(causal):
    # 3 (batch, key head) units on 8 threads: each unit's key tiles split in 3, 9 tasks in
    # chunks of 2, so a thread runs two splits of one unit back to back (the brgemm backward
    # reuses that unit's Q^T, dO^T and D) or the last split of one and the first of the next.
    threads = torch.get_num_threads()
    torch.set_num_threads(8)
    try:
        q, k, v = leaves((1, 6, 45, 16), (1, 3, 700, 16), (1, 3, 700, 8))
        ref = torch_sdpa(q, k, v, enable_gqa=True, is_causal=causal)
        g = torch.randn_like(ref)
        want = torch.autograd.grad(ref, (q, k, v), g)
        q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
        out = FF.scaled_dot_product_attention(q32, k32, v32, enable_gqa=True, is_causal=causal)
        got = torch.autograd.grad(out, (q32, k32, v32), g.float())
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=0)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, atol=1e-4, rtol=0)


@pytest.mark.parametrize("L,S,E,Ev,causal,mask", [
    (67, 131, 64, 64, False, None), (300, 700, 40, 24, True, None),
    (1030, 600, 64, 64, False, "bool"), (100, 513, 80, 80, True, "add"),
    (600, 600, 96, 96, True, None), (16, 1100, 32, 32, False, "pad"),
    (200, 90, 64, 64, True, "bool"),
])
def test_float32_tiled_forward_close_to_float64(L, S, E, Ev, causal, mask):
    # float32 forwards of these sizes take the brgemm tile path (query tiles of 32-256 rows,
    # key tiles of 512, causal tiles cut per row); float64 is the reference.
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 2, L, E), torch.randn(2, 2, S, E), torch.randn(2, 2, S, Ev)
    m = None
    if mask == "bool":
        m = torch.rand(L, S) > 0.3
        m[3] = False  # a fully masked row: zeros
    elif mask == "add":
        m = torch.randn(2, 1, L, S)
    elif mask == "pad":
        m = torch.ones(2, 1, 1, S, dtype=torch.bool)
        m[1, ..., 700:] = False
    out = FF.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal)
    md = m.double() if m is not None and m.dtype != torch.bool else m
    if causal and m is not None:  # torch's math kernel takes one or the other: combine them
        tril = torch.ones(L, S, dtype=torch.bool).tril()
        md = md & tril if md.dtype == torch.bool else md.masked_fill(~tril, float("-inf"))
    ref = torch_sdpa(q.double(), k.double(), v.double(), attn_mask=md,
                     is_causal=causal and m is None)
    if mask == "bool":
        ref[:, :, 3] = 0
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=0)
    q[0, 1, 5, 3] = float("nan")
    out = FF.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal)
    assert out[0, 1, 5].isnan().all() and not out[0, 0].isnan().any()


@pytest.mark.parametrize("Hq,Hk,L,S,E,Ev,causal,mask", [
    (2, 2, 67, 131, 64, 64, False, None), (4, 2, 300, 200, 40, 24, True, None),
    (2, 1, 130, 600, 64, 32, False, "bool"), (2, 2, 100, 257, 80, 80, True, "add"),
    (2, 2, 16, 900, 32, 32, False, "pad"), (1, 1, 45, 700, 16, 8, False, None),
    (2, 2, 200, 700, 32, 32, False, "block"), (2, 2, 200, 700, 32, 32, True, "addblock"),
])
def test_float32_tiled_backward_close_to_float64(Hq, Hk, L, S, E, Ev, causal, mask):
    # float32 gradients on the brgemm tile path (L >= 16) against float64's.
    torch.manual_seed(0)
    q = torch.randn(2, Hq, L, E, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, Hk, S, E, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, Hk, S, Ev, dtype=torch.float64, requires_grad=True)
    m = None
    if mask == "bool":
        m = torch.rand(L, S) > 0.3
        m[:, 0] = True
    elif mask == "add":
        m = torch.randn(2, 1, L, S, dtype=torch.float64, requires_grad=True)
    elif mask == "pad":
        m = torch.ones(2, 1, 1, S, dtype=torch.bool)
        m[1, ..., 500:] = False
    elif mask in ("block", "addblock"):
        # Whole tiles open or closed (skipped, or run unmasked), a few mixed.
        m = torch.zeros(L, S, dtype=torch.bool)
        m[:, :300] = True
        m[L // 2:] = True
        m[7, 400] = True
        if mask == "addblock":
            m = torch.zeros(L, S, dtype=torch.float64).masked_fill(~m, float("-inf"))
            m[:, 5] = 0.5
            m.requires_grad_()
    ins = [q, k, v] + ([m] if mask in ("add", "addblock") else [])
    kw = dict(is_causal=causal, enable_gqa=Hq != Hk)
    ref = FF.scaled_dot_product_attention(q, k, v, attn_mask=m, **kw)
    g = torch.randn_like(ref)
    want = torch.autograd.grad(ref, ins, g)
    ins32 = [t.detach().float().requires_grad_() for t in ins]
    m32 = ins32[3] if mask in ("add", "addblock") else m
    out = FF.scaled_dot_product_attention(*ins32[:3], attn_mask=m32, **kw)
    got = torch.autograd.grad(out, ins32, g.float())
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=0)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("Hq,Hk,L,S,E,causal,mask", [
    (1, 1, 1, 3000, 64, False, None), (8, 2, 1, 2100, 64, False, "pad"),
    (4, 1, 3, 1500, 40, True, None), (2, 2, 2, 1100, 96, False, "add"),
    (4, 4, 1, 700, 32, False, "bool"), (2, 1, 4, 5, 16, True, None),
])
def test_float32_decoding_close_to_float64(Hq, Hk, L, S, E, causal, mask):
    # Few query rows over a long cache: the flash-decoding path (keys split over threads,
    # partial softmax states merged), grouped-query heads sharing each key/value row.
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        torch.manual_seed(0)
        q, k, v = torch.randn(1, Hq, L, E), torch.randn(1, Hk, S, E), torch.randn(1, Hk, S, E)
        m = None
        if mask == "pad":
            m = torch.ones(1, 1, 1, S, dtype=torch.bool)
            m[..., 1800:] = False
        elif mask == "add":
            m = torch.randn(1, Hq, L, S)
        elif mask == "bool":
            m = torch.rand(L, S) > 0.5
        kw = dict(is_causal=causal, enable_gqa=Hq != Hk)
        out = FF.scaled_dot_product_attention(q, k, v, attn_mask=m, **kw)
        md = m.double() if m is not None and m.dtype != torch.bool else m
        ref = FF.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=md, **kw)
        torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=0)
        q[0, 0, 0, 1] = float("nan")
        out = FF.scaled_dot_product_attention(q, k, v, attn_mask=m, **kw)
        assert out[0, 0, 0].isnan().all()
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("L,S,E,Ev,causal,mask", [
    (67, 131, 64, 64, False, None), (300, 701, 40, 24, True, None),
    (1030, 600, 64, 80, False, "bool"), (100, 513, 80, 80, False, "add"),
    (33, 65, 16, 16, True, None), (40, 50, 15, 16, False, None),
])
def test_reduced_tiled_forward_within_twice_torchs_error(dtype, L, S, E, Ev, causal, mask):
    # bfloat16 / float16 forwards of these sizes take the packed brgemm path where oneDNN packs
    # the type (AMX): within twice torch's own error against float64.
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 2, L, E), torch.randn(2, 2, S, E), torch.randn(2, 2, S, Ev)
    m = None
    if mask == "bool":
        m = torch.rand(L, S) > 0.3
        m[:, 0] = True
    elif mask == "add":
        m = torch.randn(2, 1, L, S)
    low = [t.to(dtype) for t in (q, k, v)]
    ml = m.to(dtype) if m is not None and m.dtype != torch.bool else m
    out = FF.scaled_dot_product_attention(*low, attn_mask=ml, is_causal=causal)
    theirs = F.scaled_dot_product_attention(*low, attn_mask=ml, is_causal=causal)
    md = m.double() if m is not None and m.dtype != torch.bool else m
    ref = torch_sdpa(*(t.double() for t in low), attn_mask=md, is_causal=causal)
    err = (out.double() - ref).abs().max().item()
    assert err <= 2 * (theirs.double() - ref).abs().max().item() + 1e-3


# ---- the plain-torch attention (fastseq.ops.reference_attention.math_attention): the torch
# path of fastseq.nn.functional (ONNX, TorchScript, torch.func) and the double backward ----

from fastseq.ops.reference_attention import math_attention  # noqa: E402


@pytest.mark.parametrize("q_shape,kv_shape,kwargs", [
    ((2, 3, 5, 8), (2, 3, 7, 8), dict()),
    ((5, 8), (7, 8), dict(is_causal=True)),                          # no batch, no heads
    ((2, 2, 6, 5, 8), (2, 2, 2, 7, 8), dict(enable_gqa=True)),        # two batch dims, GQA
    ((2, 4, 5, 8), (2, 1, 7, 8), dict(attn_mask="float", scale=0.3)),  # one key head broadcast
    ((3, 5, 8), (3, 7, 8), dict(attn_mask="bool")),
])
def test_math_attention_matches_torch(q_shape, kv_shape, kwargs):
    torch.manual_seed(0)
    q, k, v = leaves(q_shape, kv_shape, kv_shape[:-1] + (6,))
    kw = dict(kwargs)
    if kw.get("attn_mask") == "bool":
        kw["attn_mask"] = torch.rand(q_shape[-2], kv_shape[-2]) > 0.3
        kw["attn_mask"][:, 0] = True
    elif kw.get("attn_mask") == "float":
        kw["attn_mask"] = torch.randn(q_shape[-2], kv_shape[-2], dtype=torch.float64, requires_grad=True)
    inputs = [q, k, v] + ([kw["attn_mask"]] if isinstance(kw.get("attn_mask"), torch.Tensor)
                          and kw["attn_mask"].requires_grad else [])
    out, weights = math_attention(q, k, v, **kw)
    ref = torch_sdpa(q, k, v, **kw)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, inputs, g), torch.autograd.grad(ref, inputs, g)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    fused_out, fused_w = FF.scaled_dot_product_attention_with_weights(q, k, v, **kw)
    torch.testing.assert_close(weights, fused_w, atol=1e-12, rtol=0)


@pytest.mark.parametrize("kind", ["bool", "causal", "additive"])
def test_math_attention_fully_masked_rows_are_zero_through_second_derivatives(kind):
    # Row 0 sees no key at all: zero output, weights and gradients (as the fused kernels give),
    # and no NaN in a second derivative either (the double backward differentiates this).
    torch.manual_seed(0)
    q, k, v = leaves((1, 2, 4, 8), (1, 2, 6, 8), (1, 2, 6, 8))
    if kind == "bool":
        kw = dict(attn_mask=torch.ones(4, 6, dtype=torch.bool))
        kw["attn_mask"][0] = False
        mask_leaf = []
    elif kind == "causal":  # causal with a bool mask hiding key 0, the only key row 0 may see
        kw = dict(is_causal=True, attn_mask=torch.ones(4, 6, dtype=torch.bool))
        kw["attn_mask"][:, 0] = False
        mask_leaf = []
    else:
        m = torch.zeros(4, 6, dtype=torch.float64)
        m[0] = float("-inf")
        kw = dict(attn_mask=m.requires_grad_())
        mask_leaf = [kw["attn_mask"]]
    out, weights = math_attention(q, k, v, **kw)
    assert (out[..., 0, :] == 0).all() and (weights[..., 0, :] == 0).all()
    fused_out, fused_w = FF.scaled_dot_product_attention_with_weights(q, k, v, **kw)
    torch.testing.assert_close(out, fused_out, atol=1e-12, rtol=0)
    torch.testing.assert_close(weights, fused_w, atol=1e-12, rtol=0)
    grads = torch.autograd.grad(out.pow(2).sum() + weights.sum(), [q, k, v] + mask_leaf,
                                create_graph=True)
    assert all(torch.isfinite(g).all() for g in grads)
    assert (grads[0][..., 0, :] == 0).all()  # d/dq of the dead row
    second = torch.autograd.grad(sum(g.pow(2).sum() for g in grads), [q, k, v])
    assert all(torch.isfinite(g).all() for g in second)
    # The fused op's double backward is this function: the same second derivative.
    f_out, f_w = FF.scaled_dot_product_attention_with_weights(q, k, v, **kw)
    f_grads = torch.autograd.grad(f_out.pow(2).sum() + f_w.sum(), [q, k, v] + mask_leaf,
                                  create_graph=True)
    f_second = torch.autograd.grad(sum(g.pow(2).sum() for g in f_grads), [q, k, v])
    for a, b in zip(f_second, second):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_math_attention_scripts_and_keeps_nan():
    scripted = torch.jit.script(math_attention)
    q, k, v = (torch.randn(2, 3, 5, 8) for _ in range(3))
    mask = torch.rand(5, 5) > 0.4
    mask[1] = False
    for kw in (dict(), dict(attn_mask=mask, is_causal=True), dict(attn_mask=torch.randn(5, 5), scale=0.5)):
        for a, b in zip(scripted(q, k, v, **kw), math_attention(q, k, v, **kw)):
            torch.testing.assert_close(a, b)
    q[0, 0, 2, 0] = float("nan")
    out, _ = math_attention(q, k, v, attn_mask=mask)
    assert torch.isnan(out[0, 0, 2]).all() and not torch.isnan(out[1]).any()


@pytest.mark.parametrize("L,S", [(16, 16), (37, 129), (64, 50)])
@pytest.mark.parametrize("mask", [None, "causal", "bool", "float", "kpm"])
@pytest.mark.parametrize("gqa,scale", [(1, None), (2, -0.3)])
def test_with_weights_float32_brgemm_path_matches_math(L, S, mask, gqa, scale):
    """float32 with weights and L >= 16 runs the brgemm weights forward (scores written into
    the weights output): output and weights against plain torch, masks of every kind, causal,
    GQA, a negative scale (no folding of the scale into the exponent) and odd sizes."""
    B, H, D = 2, 4, 33
    q, k, v = torch.randn(B, H, L, D), torch.randn(B, H // gqa, S, D), torch.randn(B, H // gqa, S, D + 3)
    m = {None: None, "causal": None, "bool": torch.rand(L, S) > 0.3, "float": torch.randn(L, S),
         "kpm": torch.rand(B, 1, 1, S) > 0.2}[mask]
    kw = dict(attn_mask=m, is_causal=mask == "causal", scale=scale, **({"enable_gqa": True} if gqa > 1 else {}))
    out, w = FF.scaled_dot_product_attention_with_weights(q, k, v, **kw)
    kk, vv = k.repeat_interleave(gqa, 1), v.repeat_interleave(gqa, 1)
    s = q @ kk.transpose(-1, -2) * (scale if scale is not None else D ** -0.5)
    if mask == "causal":
        s = s.masked_fill(~torch.ones(L, S, dtype=torch.bool).tril(), float("-inf"))
    elif m is not None:
        s = s.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else s + m
    ref_w = s.softmax(-1).nan_to_num(0.0)  # fully masked rows: zero weights (documented)
    torch.testing.assert_close(w, ref_w, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(out, ref_w @ vv, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("L", [7, 67])  # the decoding path (L < 16) and the tiled ones
def test_output_laid_out_by_position_and_head_merge_gradient_read_in_place(dtype, L):
    # As torch's CPU flash attention: out is [B, L, H, D] in memory, so a model's
    # y.transpose(1, 2).reshape(B, L, H * D) is a view, and the gradient that comes back
    # through that view (strided, not contiguous) is read where it is.
    torch.manual_seed(0)
    B, H, D = 2, 3, 16
    qkv = torch.randn(B, L, 3 * H * D, dtype=torch.float64).to(dtype).requires_grad_()
    grad = torch.randn(B, L, H * D, dtype=torch.float64).to(dtype)
    results = []
    for f in (FF.scaled_dot_product_attention, torch_sdpa):
        q, k, v = qkv.view(B, L, 3, H, D).permute(2, 0, 3, 1, 4)
        out = f(q, k, v, is_causal=True)
        if f is FF.scaled_dot_product_attention:
            assert out.transpose(1, 2).is_contiguous()
        merged = out.transpose(1, 2).reshape(B, L, H * D)
        if f is FF.scaled_dot_product_attention:
            assert merged.data_ptr() == out.data_ptr()  # a view, no copy
        results.append((merged, *torch.autograd.grad(merged, [qkv], grad)))
    tol = dict(atol=1e-10, rtol=0) if dtype == torch.float64 else dict(atol=2e-2, rtol=2e-2)
    if dtype == torch.float32:
        tol = dict(atol=2e-5, rtol=0)
    for ours, ref in zip(*results):
        torch.testing.assert_close(ours.double(), ref.double(), **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B,Hq,Hk,L,S,mask", [
    (2, 4, 4, 67, 131, None), (1, 3, 3, 300, 257, "bool"), (3, 4, 2, 40, 50, "add"),
    (2, 2, 2, 7, 33, "kpm"),  # L < 16: the per-head weights averaged in C++
    (1, 8, 8, 1030, 96, None),
])
def test_head_averaged_weights_match_the_mean_of_per_head_weights(dtype, B, Hq, Hk, L, S, mask):
    torch.manual_seed(0)
    q = torch.randn(B, Hq, L, 24, dtype=dtype)
    k, v = torch.randn(B, Hk, S, 24, dtype=dtype), torch.randn(B, Hk, S, 16, dtype=dtype)
    m = None
    if mask == "bool":
        m = torch.rand(L, S) > 0.3
        m[:, 0] = True
    elif mask == "add":
        m = torch.randn(B, 1, L, S, dtype=dtype)
    elif mask == "kpm":
        m = torch.ones(B, 1, 1, S, dtype=torch.bool)
        m[0, ..., S // 2:] = False
    ref_out, ref_w = FF.scaled_dot_product_attention_with_weights(q, k, v, attn_mask=m,
                                                                  enable_gqa=Hq != Hk)
    out, w = ops.attention_with_averaged_weights(q, k, v, m, enable_gqa=Hq != Hk)
    assert w.shape == (B, L, S)
    tol = dict(atol=1e-12, rtol=0) if dtype == torch.float64 else dict(atol=1e-6, rtol=0)
    torch.testing.assert_close(out, ref_out, **tol)
    torch.testing.assert_close(w, ref_w.mean(1), **tol)


def test_head_averaged_weights_with_dropout_average_the_dropped_weights():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 50, 16), torch.randn(2, 4, 60, 16), torch.randn(2, 4, 60, 16)
    torch.manual_seed(5)
    ref_out, ref_w = FF.scaled_dot_product_attention_with_weights(q, k, v, dropout_p=0.3)
    torch.manual_seed(5)
    out, w = ops.attention_with_averaged_weights(q, k, v, dropout_p=0.3)
    torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=0)
    torch.testing.assert_close(w, ref_w.mean(1), atol=1e-6, rtol=0)


def test_head_averaged_weights_leave_gradients_to_the_per_head_path():
    q = torch.randn(1, 2, 20, 8, requires_grad=True)
    k = v = torch.randn(1, 2, 20, 8)
    assert ops.attention_with_averaged_weights(q, k, v) is None
    with torch.no_grad():
        assert ops.attention_with_averaged_weights(q, k, v) is not None
