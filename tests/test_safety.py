"""Drop-in beyond forward and first gradients, against torch's behaviour on the same call:
torch.autocast (dtypes, values, no crash), NaN / inf propagation, double backward, and the
edge cases of issue 10 (dropout_p = 1, zero heads, meta tensors). The autocast crash cases
run in a subprocess, so a regression fails one test instead of killing the suite."""
import copy
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import fastseq.nn as fnn
import fastseq.nn.functional as FF
from fastseq.ops import _autocast

RECURRENT = ["LSTM", "GRU", "RNN"]
CELLS = ["LSTMCell", "GRUCell", "RNNCell"]
ATTENTION = ["MultiheadAttention", "TransformerEncoderLayer", "TransformerDecoderLayer"]


def _pair(name, dtype=torch.float32, **kwargs):
    """(torch module, fastseq module) with identical weights, in eval mode (no dropout)."""
    if name in ATTENTION:
        args = (8, 2)
        if name != "MultiheadAttention":
            kwargs.setdefault("dim_feedforward", 16)
            kwargs.setdefault("dropout", 0.0)
    else:
        args = (8, 16)
    torch.manual_seed(0)
    ref = getattr(torch.nn, name)(*args, **kwargs).to(dtype).eval()
    fast = getattr(fnn, name)(*args, **kwargs).to(dtype).eval()
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _inputs(name, x):
    if name in CELLS:
        return (x[0],)
    if name == "MultiheadAttention":
        return (x, x, x)
    if name == "TransformerDecoderLayer":
        return (x, x)
    return (x,)


def _first(out):
    return out[0] if isinstance(out, tuple) else out


# ---- autocast -----------------------------------------------------------------------------

def test_autocast_lstm_does_not_crash_the_interpreter():
    """The issue's reproducer aborted the interpreter (heap corruption): run it in a child."""
    code = textwrap.dedent("""
        import torch, fastseq.nn as nn
        for layers in (1, 2):
            m = nn.LSTM(8, 16, num_layers=layers)
            for train in (True, False):
                m.train(train)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    out, _ = m(torch.randn(6, 4, 8))
                assert out.dtype == torch.bfloat16, out.dtype
                if train:
                    out.float().sum().backward()
        cell = nn.LSTMCell(8, 16)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h, c = cell(torch.randn(4, 8))
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ok")


@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", RECURRENT + CELLS + ATTENTION)
def test_autocast_matches_torch(name, autocast_dtype):
    ref, fast = _pair(name)
    x = torch.randn(5, 3, 8)
    with torch.autocast("cpu", dtype=autocast_dtype):
        try:
            expected = _first(ref(*_inputs(name, x)))
        except RuntimeError:
            expected = None  # torch's own oneDNN LSTM has no CPU float16 kernel
        got = _first(fast(*_inputs(name, x)))
    if expected is None:
        assert name == "LSTM" and autocast_dtype == torch.float16
        assert got.dtype == torch.float16  # fastseq computes in float32, returns float16
        with torch.no_grad():
            torch.testing.assert_close(got.float(), _first(ref(x)), atol=2e-3, rtol=2e-3)
        return
    assert got.dtype == expected.dtype
    # The project's rule for low precision: error against float64 at most twice torch's own.
    # (torch's GRU and cells return float32 under autocast but run their GEMMs in the
    # autocast dtype; fastseq runs them in float32, so its error is far below torch's.)
    exact = _first(copy.deepcopy(ref).double()(*_inputs(name, x.double())))
    err_torch = (expected.double() - exact).abs().max().item()
    err_fast = (got.double() - exact).abs().max().item()
    assert err_fast <= 2 * err_torch + 1e-6, (err_fast, err_torch)


@pytest.mark.parametrize("name", RECURRENT + CELLS + ["MultiheadAttention"])
def test_autocast_training_gives_float32_weight_grads(name):
    _, fast = _pair(name)
    fast.train()
    x = torch.randn(5, 3, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _first(fast(*_inputs(name, x)))
    out.float().sum().backward()
    for p in fast.parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32
        assert torch.isfinite(p.grad).all()
    assert x.grad.dtype == torch.float32


@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16])
def test_autocast_sdpa_matches_torch(autocast_dtype):
    q, k, v = (torch.randn(2, 3, 7, 8) for _ in range(3))
    mask = torch.randn(7, 7)
    with torch.autocast("cpu", dtype=autocast_dtype):
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        got = FF.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        got_w, weights = FF.scaled_dot_product_attention_with_weights(q, k, v, attn_mask=mask)
    assert got.dtype == expected.dtype == got_w.dtype == weights.dtype == autocast_dtype
    torch.testing.assert_close(got.float(), expected.float(), atol=4e-2, rtol=4e-2)


def test_autocast_casts_keyword_arguments_like_positional_ones():
    """Tensors passed by keyword (also inside a dict) are cast, and a call whose tensors are
    all keywords still sees the autocast (it was skipped: the device came from args only)."""
    seen = {}

    @_autocast.autocast_as("attention")
    def op(query=None, mask=None, extra=None):
        seen.update(query=query.dtype, mask=mask.dtype, extra=extra["t"].dtype,
                    autocast_on=torch.is_autocast_enabled("cpu"))
        return query

    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = op(query=torch.randn(2, 3), mask=torch.randn(3), extra={"t": torch.randn(1)})
    assert seen == {"query": torch.bfloat16, "mask": torch.bfloat16, "extra": torch.bfloat16,
                    "autocast_on": False}
    assert out.dtype == torch.bfloat16


def test_autocast_policy_covers_every_op():
    for op in _autocast.OPS:
        for device_type in ("cpu", "cuda"):
            run, out = _autocast.compute_dtypes(op, device_type, torch.bfloat16)
            assert run in (torch.float32, torch.bfloat16) and out in (torch.float32, torch.bfloat16)


def test_internal_gemm_ignores_autocast():
    """fastseq._C's GEMMs run in their inputs' dtype even with autocast on (the crash's cause)."""
    from fastseq import _C
    x, h, c = torch.randn(3, 4, 8), torch.zeros(4, 16), torch.zeros(4, 16)
    w_ih, w_hh = torch.randn(64, 8), torch.randn(64, 16)
    expected = _C.lstm_layer_forward(x, h, c, w_ih, w_hh, None, None, None, None, False)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _C.lstm_layer_forward(x, h, c, w_ih, w_hh, None, None, None, None, False)[0]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected)


# ---- NaN and inf --------------------------------------------------------------------------

def _poison(t, value):
    t = t.clone()
    t.view(-1)[t.numel() // 2] = value
    return t


def _recurrent_cases():
    for name in RECURRENT + CELLS:
        for where in ("input", "state", "cell", "weight"):
            if where == "cell" and name not in ("LSTM", "LSTMCell"):
                continue
            yield name, where


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("name,where", list(_recurrent_cases()))
def test_nan_and_inf_propagate_as_torch(name, where, dtype, value):
    ref, fast = _pair(name, dtype)
    x = torch.randn(5, 3, 8, dtype=dtype)
    cell = name in CELLS
    batch = (3,) if cell else (1, 3)
    h = torch.randn(*batch, 16, dtype=dtype)
    state = (h, torch.randn(*batch, 16, dtype=dtype)) if "LSTM" in name else h
    if where == "input":
        x = _poison(x, value)
    elif where == "state":
        state = (_poison(state[0], value), state[1]) if "LSTM" in name else _poison(state, value)
    elif where == "cell":
        state = (state[0], _poison(state[1], value))
    else:
        with torch.no_grad():
            for m in (ref, fast):
                w = m.weight_hh if cell else m.weight_hh_l0
                w.copy_(_poison(w, value))
    inp = x[0] if cell else x
    expected = ref(inp, state)
    got = fast(inp, state)
    for e, g in zip(_flat(expected), _flat(got)):
        assert torch.equal(e.isnan(), g.isnan()), (name, where)
        assert torch.equal(e.isinf(), g.isinf()), (name, where)


def _flat(out):
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat(o)]
    return [out]


def test_nan_reaches_lstm_gradients():
    ref, fast = _pair("LSTM")
    x = _poison(torch.randn(5, 3, 8), float("nan")).requires_grad_()
    for m in (ref, fast):
        m(x)[0].sum().backward()
    for p_ref, p_fast in zip(ref.parameters(), fast.parameters()):
        assert torch.equal(p_ref.grad.isnan(), p_fast.grad.isnan())


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("which", ["query", "key", "value"])
def test_sdpa_nan_and_inf_propagate_as_torch_math(which, dtype, value):
    """Against torch's math backend: its CPU flash kernel leaves some entries of a NaN row
    at 0, which hides the NaN; the math definition makes the whole affected row NaN."""
    torch.manual_seed(0)
    qkv = {n: torch.randn(2, 2, 6, 8, dtype=dtype) for n in ("query", "key", "value")}
    qkv[which] = _poison(qkv[which], value)
    with sdpa_kernel(SDPBackend.MATH):
        expected = F.scaled_dot_product_attention(**qkv)
    got = FF.scaled_dot_product_attention(**qkv)
    _, weights = FF.scaled_dot_product_attention_with_weights(**qkv)
    assert torch.equal(expected.isnan(), got.isnan())
    expected_w = torch.softmax(qkv["query"] @ qkv["key"].transpose(-1, -2) / 8 ** 0.5, -1)
    assert torch.equal(expected_w.isnan(), weights.isnan())


def test_mha_need_weights_propagates_nan():
    ref, fast = _pair("MultiheadAttention")
    x = _poison(torch.randn(5, 2, 8), float("nan"))
    out_r, w_r = ref(x, x, x)
    out_f, w_f = fast(x, x, x)
    assert torch.equal(out_r.isnan(), out_f.isnan())
    assert torch.equal(w_r.isnan(), w_f.isnan())


# ---- double backward ----------------------------------------------------------------------

def _gradient_penalty_grads(module, x, run):
    out = _first(run(module, x))
    (g,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    assert g.requires_grad
    (out.pow(2).sum() + g.pow(2).sum()).backward()
    return [p.grad.clone() for p in module.parameters()] + [x.grad.clone()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,kwargs", [
    ("LSTM", dict(num_layers=2)), ("LSTM", dict(bidirectional=True, proj_size=5)),
    ("GRU", dict(num_layers=2)), ("GRU", dict(bidirectional=True)), ("RNN", dict(nonlinearity="relu")),
    ("RNN", dict(num_layers=2)), ("LSTMCell", {}), ("GRUCell", {}), ("RNNCell", {}),
    ("RNNCell", dict(nonlinearity="relu")),
])
def test_double_backward_matches_torch(name, kwargs, dtype):
    ref, fast = _pair(name, dtype, **kwargs)
    cell = name in CELLS
    torch.manual_seed(1)
    x0 = torch.randn(3, 8, dtype=dtype) if cell else torch.randn(5, 3, 8, dtype=dtype)
    results = []
    for m in (ref, fast):
        x = x0.clone().requires_grad_()
        results.append(_gradient_penalty_grads(m, x, lambda mod, inp: mod(inp)))
    tol = dict(atol=1e-9, rtol=1e-7) if dtype == torch.float64 else dict(atol=1e-4, rtol=1e-3)
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, **tol)


@pytest.mark.parametrize("kwargs", [dict(is_causal=True), dict(mask=True), dict(gqa=True), {}])
def test_sdpa_double_backward_matches_torch_math(kwargs):
    torch.manual_seed(0)
    dt = torch.float64
    hk = 1 if kwargs.get("gqa") else 4
    q = torch.randn(2, 4, 5, 8, dtype=dt, requires_grad=True)
    k = torch.randn(2, hk, 7, 8, dtype=dt, requires_grad=True)
    v = torch.randn(2, hk, 7, 6, dtype=dt, requires_grad=True)
    extra = dict(is_causal=kwargs.get("is_causal", False), enable_gqa=bool(kwargs.get("gqa")))
    if kwargs.get("mask"):
        extra["attn_mask"] = torch.randn(5, 7, dtype=dt)
    grads = []
    for fn in ("torch", "fastseq"):
        for t in (q, k, v):
            t.grad = None
        if fn == "torch":
            with sdpa_kernel(SDPBackend.MATH):
                out = F.scaled_dot_product_attention(q, k, v, **extra)
                (g,) = torch.autograd.grad(out.sum(), q, create_graph=True)
                (out.pow(2).sum() + g.pow(2).sum()).backward()
        else:
            out = FF.scaled_dot_product_attention(q, k, v, **extra)
            (g,) = torch.autograd.grad(out.sum(), q, create_graph=True)
            (out.pow(2).sum() + g.pow(2).sum()).backward()
        grads.append([t.grad.clone() for t in (q, k, v)])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, atol=1e-9, rtol=1e-7)


def test_sdpa_double_backward_with_dropout_is_a_clear_error():
    q = torch.randn(1, 2, 4, 8, requires_grad=True)
    out = FF.scaled_dot_product_attention(q, q, q, dropout_p=0.5)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(out.sum(), q, create_graph=True)


def test_double_backward_through_mha_runs():
    _, fast = _pair("MultiheadAttention", torch.float64)
    x = torch.randn(5, 2, 8, dtype=torch.float64, requires_grad=True)
    grads = _gradient_penalty_grads(fast, x, lambda m, inp: m(inp, inp, inp, need_weights=False))
    assert all(torch.isfinite(g).all() for g in grads)


# ---- edge cases ---------------------------------------------------------------------------

@pytest.mark.parametrize("with_weights", [False, True])
def test_sdpa_dropout_one_gives_zeros(with_weights):
    q = torch.randn(2, 3, 5, 8, requires_grad=True)
    expected = F.scaled_dot_product_attention(q, q, q, dropout_p=1.0)
    fn = FF.scaled_dot_product_attention_with_weights if with_weights else FF.scaled_dot_product_attention
    out = fn(q, q, q, dropout_p=1.0)
    outs = out if with_weights else (out,)
    assert torch.equal(outs[0], expected)
    sum(o.sum() for o in outs).backward()
    assert torch.equal(q.grad, torch.zeros_like(q))


def test_sdpa_zero_heads_gives_empty_output():
    q = torch.randn(2, 0, 5, 8)
    assert FF.scaled_dot_product_attention(q, q, q).shape == F.scaled_dot_product_attention(q, q, q).shape


@pytest.mark.parametrize("name", RECURRENT + CELLS + ATTENTION)
def test_meta_device_forward_gives_torch_shapes(name):
    ref, fast = _pair(name)
    x = torch.randn(5, 3, 8)
    expected = [t.shape for t in _flat(ref(*_inputs(name, x))) if t is not None]
    fast = fast.to("meta")
    got = _flat(fast(*_inputs(name, x.to("meta"))))
    assert [t.shape for t in got if t is not None] == expected
    assert all(t.device.type == "meta" for t in got if t is not None)


def test_meta_sdpa():
    q = torch.randn(2, 3, 5, 8, device="meta")
    out, weights = FF.scaled_dot_product_attention_with_weights(q, q, q)
    assert out.shape == (2, 3, 5, 8) and weights.shape == (2, 3, 5, 5) and out.is_meta


# ---- the CPU GEMM backend choice ------------------------------------------------------------

@pytest.mark.parametrize("backend", ["aten", "onednn"])
def test_gemm_backends_agree(backend):
    """The layers give the same results whichever library runs their large GEMMs."""
    from fastseq import _C
    x = torch.randn(40, 64, 8)  # M * N * K above the size where a library is chosen
    fast = fnn.LSTM(8, 128)
    ref = torch.nn.LSTM(8, 128)
    fast.load_state_dict(ref.state_dict())
    try:
        _C.set_cpu_gemm_backend(backend)
        assert _C.cpu_gemm_backend() == backend
        torch.testing.assert_close(fast(x)[0], ref(x)[0], atol=2e-5, rtol=1e-4)
    finally:
        _C.set_cpu_gemm_backend("auto")


def test_gemm_backend_bad_name():
    from fastseq import _C
    with pytest.raises(RuntimeError, match='name must be "auto", "onednn" or "aten", got "mkl"'):
        _C.set_cpu_gemm_backend("mkl")
