"""fastseq.nn.MultiheadAttention against torch.nn.MultiheadAttention: same parameters and
init, same outputs, attention weights and gradients for every mask kind and option."""
import itertools
import warnings

import pytest
import torch

import fastseq.nn as fnn
import fastseq.nn.functional as fF
from conftest import requires_cuda

TOL = {torch.float64: dict(rtol=1e-9, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=2e-5)}


def make_pair(seed=0, dtype=torch.float64, **kwargs):
    torch.manual_seed(seed)
    ref = torch.nn.MultiheadAttention(dtype=dtype, **kwargs)
    torch.manual_seed(seed)
    fast = fnn.MultiheadAttention(dtype=dtype, **kwargs)
    if kwargs.get("bias", True):    # torch inits biases to 0: make them matter in the tests
        with torch.no_grad():
            for m in (ref, fast):
                torch.manual_seed(seed + 1)
                m.in_proj_bias.uniform_(-0.5, 0.5)
                m.out_proj.bias.uniform_(-0.5, 0.5)
    return ref, fast


def inputs(kind, L, S, N, E, kdim, vdim, batch_first, dtype, batched=True):
    """kind: 'self' (q is k is v), 'encdec' (k is v), 'separate'."""
    def t(T, D):
        if not batched:
            shape = (T, D)
        else:
            shape = (N, T, D) if batch_first else (T, N, D)
        return torch.randn(shape, dtype=dtype, requires_grad=True)
    q = t(L, E)
    if kind == "self":
        return q, q, q
    k = t(S, kdim)
    if kind == "encdec":
        return q, k, k
    return q, k, t(S, vdim)


def clone_inputs(q, k, v):
    """Independent leaf copies that keep the q/k/v identity pattern."""
    cq = q.detach().clone().requires_grad_()
    ck = cq if k is q else k.detach().clone().requires_grad_()
    cv = ck if v is k else (cq if v is q else v.detach().clone().requires_grad_())
    return cq, ck, cv


def run_and_grad(mha, q, k, v, need_weights, **kw):
    out, w = mha(q, k, v, need_weights=need_weights, **kw)
    loss = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum()
    if w is not None:
        loss = loss + (w * torch.linspace(0.5, 2, w.numel(), dtype=w.dtype).view_as(w)).sum()
    leaves = [x for x in dict.fromkeys([q, k, v]) if x.requires_grad]
    params = [p for p in mha.parameters()]
    grads = torch.autograd.grad(loss, leaves + params, allow_unused=True)
    return out, w, grads


def assert_same(ref, fast, q, k, v, need_weights=True, dtype=torch.float64, **kw):
    rq, rk, rv = clone_inputs(q, k, v)
    fq, fk, fv = clone_inputs(q, k, v)
    r_out, r_w, r_g = run_and_grad(ref, rq, rk, rv, need_weights, **kw)
    f_out, f_w, f_g = run_and_grad(fast, fq, fk, fv, need_weights, **kw)
    tol = TOL[dtype]
    torch.testing.assert_close(f_out, r_out, **tol)
    if need_weights:
        torch.testing.assert_close(f_w, r_w, **tol)
    else:
        assert f_w is None and r_w is None
    assert len(r_g) == len(f_g)
    for i, (a, b) in enumerate(zip(r_g, f_g)):
        if a is None:
            assert b is None or not b.abs().any(), f"grad {i}"
        else:
            torch.testing.assert_close(b, a, **tol, msg=lambda m: f"grad {i}: {m}")


def masks(kind, N, H, L, S, dtype, batched=True):
    g = torch.Generator().manual_seed(3)

    def boolmask(*shape):
        m = torch.rand(*shape, generator=g) < 0.3
        m[..., 0] = False          # keep at least one key per row so no row is fully masked
        return m

    def floatmask(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    kpm_shape = (N, S) if batched else (S,)
    am3 = (N * H, L, S) if batched else (H, L, S)
    return {
        "none": {},
        "bool2d": dict(attn_mask=boolmask(L, S)),
        "float2d": dict(attn_mask=floatmask(L, S)),
        "bool3d": dict(attn_mask=boolmask(*am3)),
        "float3d": dict(attn_mask=floatmask(*am3)),
        "kpm_bool": dict(key_padding_mask=boolmask(*kpm_shape)),
        "kpm_float": dict(key_padding_mask=floatmask(*kpm_shape)),
        "both_bool": dict(attn_mask=boolmask(L, S), key_padding_mask=boolmask(*kpm_shape)),
        "both_float3d": dict(attn_mask=floatmask(*am3), key_padding_mask=floatmask(*kpm_shape)),
        "both_bool3d": dict(attn_mask=boolmask(*am3), key_padding_mask=boolmask(*kpm_shape)),
    }[kind]


MASK_KINDS = ["none", "bool2d", "float2d", "bool3d", "float3d", "kpm_bool", "kpm_float",
              "both_bool", "both_float3d", "both_bool3d"]


@pytest.mark.parametrize("mask_kind", MASK_KINDS)
@pytest.mark.parametrize("need_weights,average", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("batch_first", [False, True])
def test_masks_and_weights_float64(mask_kind, need_weights, average, batch_first):
    N, L, S, E, H = 3, 5, 7, 12, 3
    ref, fast = make_pair(embed_dim=E, num_heads=H, batch_first=batch_first)
    q, k, v = inputs("encdec", L, S, N, E, E, E, batch_first, torch.float64)
    assert_same(ref, fast, q, k, v, need_weights=need_weights, average_attn_weights=average,
                **masks(mask_kind, N, H, L, S, torch.float64))


CONFIGS = [
    # embed_dim, num_heads, kdim, vdim, bias, add_bias_kv, add_zero_attn
    (8, 2, None, None, True, False, False),
    (8, 1, None, None, False, False, False),
    (10, 5, None, None, True, True, False),
    (6, 3, None, None, True, False, True),
    (6, 2, None, None, True, True, True),
    (12, 4, 5, 7, True, False, False),
    (12, 3, 5, 7, False, True, True),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "E{}H{}k{}v{}b{}kv{}z{}".format(*c))
@pytest.mark.parametrize("kind", ["self", "encdec", "separate"])
@pytest.mark.parametrize("mask_kind", ["none", "both_bool", "both_float3d"])
def test_options(cfg, kind, mask_kind):
    E, H, kdim, vdim, bias, bias_kv, zero_attn = cfg
    if kind != "separate" and (kdim or vdim):
        kind = "separate"
    L, S, N = (5, 5, 2) if kind == "self" else (3, 7, 2)
    ref, fast = make_pair(embed_dim=E, num_heads=H, kdim=kdim, vdim=vdim, bias=bias,
                          add_bias_kv=bias_kv, add_zero_attn=zero_attn)
    q, k, v = inputs(kind, L, S, N, E, kdim or E, vdim or E, False, torch.float64)
    for nw in (True, False):
        assert_same(ref, fast, q, k, v, need_weights=nw, average_attn_weights=False,
                    **masks(mask_kind, N, H, L, S, torch.float64))


@pytest.mark.parametrize("L,S,N", [(1, 1, 1), (1, 13, 2), (13, 1, 3), (7, 11, 5), (2, 3, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_odd_sizes(L, S, N, dtype):
    E, H = 14, 7
    ref, fast = make_pair(embed_dim=E, num_heads=H, dtype=dtype, batch_first=True)
    q, k, v = inputs("separate", L, S, N, E, E, E, True, dtype)
    for nw, mk in itertools.product((True, False), ("none", "kpm_bool", "float3d")):
        assert_same(ref, fast, q, k, v, need_weights=nw, dtype=dtype, **masks(mk, N, H, L, S, dtype))


@pytest.mark.parametrize("mask_kind", ["none", "bool2d", "float3d", "kpm_bool", "both_bool3d"])
@pytest.mark.parametrize("kind", ["self", "separate"])
def test_unbatched(mask_kind, kind):
    E, H, L, S = 8, 2, 4, 4 if kind == "self" else 6
    ref, fast = make_pair(embed_dim=E, num_heads=H, batch_first=True, add_bias_kv=True)
    q, k, v = inputs(kind, L, S, 1, E, E, E, True, torch.float64, batched=False)
    for nw, avg in ((True, True), (True, False), (False, True)):
        assert_same(ref, fast, q, k, v, need_weights=nw, average_attn_weights=avg,
                    **masks(mask_kind, 1, H, L, S, torch.float64, batched=False))


def test_float32_and_non_contiguous_inputs():
    E, H, N, L, S = 16, 4, 3, 9, 6
    ref, fast = make_pair(embed_dim=E, num_heads=H, dtype=torch.float32)
    q = torch.randn(N, L, E).transpose(0, 1).requires_grad_()           # (L, N, E), strided
    k = torch.randn(S, N, 2 * E)[..., ::2].detach().requires_grad_()   # strided last dim
    v = torch.randn(S, N, E)
    for nw in (True, False):
        assert_same(ref, fast, q, k, v, need_weights=nw, dtype=torch.float32,
                    **masks("both_bool", N, H, L, S, torch.float32))


@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("with_kpm", [False, True])
def test_is_causal_hint(need_weights, with_kpm):
    E, H, N, L = 8, 2, 2, 6
    ref, fast = make_pair(embed_dim=E, num_heads=H, batch_first=True)
    causal = torch.nn.Transformer.generate_square_subsequent_mask(L, dtype=torch.float64)
    q, k, v = inputs("self", L, L, N, E, E, E, True, torch.float64)
    kw = dict(attn_mask=causal, is_causal=True)
    if with_kpm:
        kw["key_padding_mask"] = masks("kpm_bool", N, H, L, L, torch.float64)["key_padding_mask"]
        kw["key_padding_mask"][:, 0] = False
        kw["attn_mask"] = causal.isinf()   # bool causal mask, same type as the padding mask
    assert_same(ref, fast, q, k, v, need_weights=need_weights, **kw)


def test_is_causal_needs_mask():
    fast = fnn.MultiheadAttention(8, 2)
    x = torch.randn(3, 2, 8)
    with pytest.raises(RuntimeError, match="Need attn_mask if specifying the is_causal hint"):
        fast(x, x, x, is_causal=True)


def test_mixed_mask_types_warn_and_match():
    E, H, N, L, S = 8, 2, 2, 3, 5
    ref, fast = make_pair(embed_dim=E, num_heads=H)
    q, k, v = inputs("separate", L, S, N, E, E, E, False, torch.float64)
    m = dict(attn_mask=masks("float2d", N, H, L, S, torch.float64)["attn_mask"],
             key_padding_mask=masks("kpm_bool", N, H, L, S, torch.float64)["key_padding_mask"])
    with pytest.warns(UserWarning, match="mismatched key_padding_mask and attn_mask"):
        out, w = fast(q, k, v, **m)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r_out, r_w = ref(q, k, v, **m)
    torch.testing.assert_close(out, r_out, **TOL[torch.float64])
    torch.testing.assert_close(w, r_w, **TOL[torch.float64])


def test_fully_masked_row_gives_zero_attention():
    """torch's need_weights=False path (SDPA) gives a zero attention row; fastseq does so
    with and without weights (torch's need_weights=True path gives NaN there)."""
    E, H, N, L, S = 8, 2, 1, 3, 4
    ref, fast = make_pair(embed_dim=E, num_heads=H)
    q, k, v = inputs("separate", L, S, N, E, E, E, False, torch.float64)
    am = torch.zeros(L, S, dtype=torch.bool)
    am[1] = True
    r_out, _ = ref(q, k, v, attn_mask=am, need_weights=False)
    for nw in (False, True):
        out, w = fast(q, k, v, attn_mask=am, need_weights=nw)
        torch.testing.assert_close(out, r_out, **TOL[torch.float64])
        assert torch.isfinite(out).all()
        if nw:
            assert (w[:, 1] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_train_mode_dropout_zero_matches(dtype):
    E, H, N, L, S = 8, 4, 2, 5, 3
    ref, fast = make_pair(embed_dim=E, num_heads=H, dropout=0.0, dtype=dtype)
    ref.train(), fast.train()
    q, k, v = inputs("encdec", L, S, N, E, E, E, False, dtype)
    assert_same(ref, fast, q, k, v, need_weights=True, dtype=dtype,
                **masks("kpm_bool", N, H, L, S, dtype))


def test_dropout_statistics_and_eval():
    p, E, H, N, L, S = 0.4, 16, 4, 4, 32, 48
    ref, fast = make_pair(embed_dim=E, num_heads=H, dropout=p, dtype=torch.float32)
    q, k, v = inputs("separate", L, S, N, E, E, E, False, torch.float32)
    fast.train()
    out1, w = fast(q, k, v, need_weights=True, average_attn_weights=False)
    out2, _ = fast(q, k, v, need_weights=False)
    assert out1.shape == (L, N, E) and w.shape == (N, H, L, S) and out2.shape == (L, N, E)
    zero_frac = (w == 0).double().mean().item()
    assert abs(zero_frac - p) < 0.03, zero_frac
    # kept weights are scaled by 1/(1-p): rows sum to 1 on average
    assert abs(w.sum(-1).mean().item() - 1.0) < 0.05
    assert not torch.allclose(out1, fast(q, k, v, need_weights=True)[0])
    ref.eval(), fast.eval()
    assert_same(ref, fast, q, k, v, need_weights=True, dtype=torch.float32)
    assert_same(ref, fast, q, k, v, need_weights=False, dtype=torch.float32)


@pytest.mark.parametrize("kw", [dict(), dict(kdim=3, vdim=5), dict(add_bias_kv=True, bias=False)])
def test_same_init_and_state_dict_both_ways(kw):
    ref, fast = make_pair(embed_dim=10, num_heads=2, dtype=torch.float32, **kw)
    torch.manual_seed(7)
    a = torch.nn.MultiheadAttention(10, 2, **kw)
    torch.manual_seed(7)
    b = fnn.MultiheadAttention(10, 2, **kw)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name
    assert [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()]
    torch.manual_seed(8)
    c = torch.nn.MultiheadAttention(10, 2, **kw)
    b.load_state_dict(c.state_dict(), strict=True)
    a.load_state_dict(fnn.MultiheadAttention(10, 2, **kw).state_dict(), strict=True)
    assert isinstance(b, torch.nn.MultiheadAttention)


def test_uses_fastseq_kernel_not_torch_fast_path(monkeypatch):
    """In eval mode without grad torch would take _native_multi_head_attention; fastseq
    must run its own functional kernels instead."""
    calls = []
    real_sdpa, real_w = fF.scaled_dot_product_attention, fF.scaled_dot_product_attention_with_weights
    monkeypatch.setattr(fF, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append("sdpa") or real_sdpa(*a, **k))
    monkeypatch.setattr(fF, "scaled_dot_product_attention_with_weights",
                        lambda *a, **k: calls.append("weights") or real_w(*a, **k))
    from fastseq.ops import attention as attention_ops
    real_avg = attention_ops.attention_with_averaged_weights
    monkeypatch.setattr(attention_ops, "attention_with_averaged_weights",
                        lambda *a, **k: calls.append("averaged") or real_avg(*a, **k))
    monkeypatch.setattr(torch, "_native_multi_head_attention",
                        lambda *a, **k: pytest.fail("torch's native MHA fast path was used"))
    fast = fnn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        fast(x, x, x, need_weights=False)
        fast(x, x, x)  # head-averaged weights: from the kernel, no per-head path
        fast(x, x, x, average_attn_weights=False)
    assert calls == ["sdpa", "averaged", "weights"]


def test_gradcheck_small():
    E, H, N, L, S = 4, 2, 2, 3, 2
    ref, fast = make_pair(embed_dim=E, num_heads=H, add_bias_kv=True, add_zero_attn=True)
    names = [n for n, _ in fast.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in fast.parameters()]
    q, k, v = inputs("separate", L, S, N, E, E, E, False, torch.float64)
    m = masks("both_float3d", N, H, L, S, torch.float64)

    def f(q, k, v, *ps):
        out, w = torch.func.functional_call(fast, dict(zip(names, ps)), (q, k, v), m)
        return out, w

    assert torch.autograd.gradcheck(f, (q, k, v, *params))


@pytest.mark.parametrize("need_weights", [True, False])
def test_device_float32(device, need_weights):
    E, H, N, L, S = 32, 4, 3, 17, 23
    ref, fast = make_pair(embed_dim=E, num_heads=H, dtype=torch.float32, batch_first=True)
    ref.to(device), fast.to(device)
    q = torch.randn(N, L, E, device=device, requires_grad=True)
    k = torch.randn(N, S, E, device=device, requires_grad=True)
    kpm = torch.zeros(N, S, dtype=torch.bool, device=device)
    kpm[1, 15:] = True
    am = torch.randn(L, S, device=device)
    for mask in (dict(key_padding_mask=kpm), dict(key_padding_mask=kpm.float().masked_fill(kpm, float("-inf")),
                                                  attn_mask=am)):
        r_out, r_w = ref(q, k, k, need_weights=need_weights, **mask)
        f_out, f_w = fast(q, k, k, need_weights=need_weights, **mask)
        torch.testing.assert_close(f_out, r_out, **TOL[torch.float32])
        if need_weights:
            torch.testing.assert_close(f_w, r_w, **TOL[torch.float32])
        gr = torch.autograd.grad(r_out.sum(), [q, k] + list(ref.parameters()))
        gf = torch.autograd.grad(f_out.sum(), [q, k] + list(fast.parameters()))
        for a, b in zip(gr, gf):
            torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4)


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("need_weights", [True, False])
def test_low_precision_error_within_twice_torch(dtype, need_weights):
    """fp16/bf16: fastseq's error against a float64 reference is at most twice torch's."""
    E, H, N, L, S = 64, 4, 4, 37, 53
    ref64, _ = make_pair(embed_dim=E, num_heads=H, dtype=torch.float64, batch_first=True)
    ref64.cuda()
    ref = torch.nn.MultiheadAttention(E, H, batch_first=True, dtype=dtype, device="cuda")
    fast = fnn.MultiheadAttention(E, H, batch_first=True, dtype=dtype, device="cuda")
    ref.load_state_dict(ref64.state_dict()), fast.load_state_dict(ref64.state_dict())
    q, k = torch.randn(N, L, E, device="cuda"), torch.randn(N, S, E, device="cuda")
    kpm = torch.zeros(N, S, dtype=torch.bool, device="cuda")
    kpm[0, 40:] = True
    gold, gold_w = ref64(q.double(), k.double(), k.double(), key_padding_mask=kpm, need_weights=need_weights)
    r_out, r_w = ref(q.to(dtype), k.to(dtype), k.to(dtype), key_padding_mask=kpm, need_weights=need_weights)
    f_out, f_w = fast(q.to(dtype), k.to(dtype), k.to(dtype), key_padding_mask=kpm, need_weights=need_weights)
    err = lambda a, b: (a.double() - b).abs().max().item()
    assert err(f_out, gold) <= 2 * err(r_out, gold) + 1e-6
    if need_weights:
        assert err(f_w, gold_w) <= 2 * err(r_w, gold_w) + 1e-6


@pytest.mark.parametrize("L,S,N", [(0, 3, 2), (3, 3, 0), (3, 0, 2)])
@pytest.mark.parametrize("need_weights", [True, False])
def test_zero_length(L, S, N, need_weights):
    ref, fast = make_pair(embed_dim=8, num_heads=2)
    q, k, v = inputs("encdec", L, S, N, 8, 8, 8, False, torch.float64)
    assert_same(ref, fast, q, k, v, need_weights=need_weights)
