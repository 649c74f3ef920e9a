"""fastseq.nn.LSTM / LSTMCell and the fastseq::lstm_* ops against torch.nn.LSTM / LSTMCell and
the pure-torch reference: outputs and every gradient, odd shapes, packed sequences, custom-op
checks and torch.compile."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, PackedSequence

import fastseq
import fastseq.nn as fnn
from fastseq.ops import lstm as ops
from fastseq.ops.reference import lstm_layer_reference

TOL = {torch.float32: dict(atol=2e-5, rtol=1e-4), torch.float64: dict(atol=1e-10, rtol=1e-9)}


def _tensors(out):
    if isinstance(out, PackedSequence):
        return [out.data]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    return [out]


def _pair(kwargs, dtype=torch.float32, device="cpu"):
    """A torch.nn.LSTM and a fastseq.nn.LSTM with identical weights."""
    ref = torch.nn.LSTM(**kwargs).to(device=device, dtype=dtype)
    fast = fnn.LSTM(**kwargs).to(device=device, dtype=dtype)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _outputs_and_grads(module, inputs, run):
    """Forward, then gradients of a random projection of every output w.r.t. the inputs
    that require grad and all parameters."""
    out = run(module)
    gen = torch.Generator().manual_seed(1)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device)).sum()
               for t in _tensors(out))
    wrt = [t for t in inputs if t.requires_grad] + list(module.parameters())
    return _tensors(out), torch.autograd.grad(loss, wrt, allow_unused=False)


def _assert_same(ref, fast, tol):
    assert len(ref) == len(fast)
    for a, b in zip(ref, fast):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, **tol)


def _check_against_torch(kwargs, x, hx=None, dtype=torch.float32, make_input=None):
    ref, fast = _pair(kwargs, dtype, x.device)
    leaves = [x] + (list(hx) if hx is not None else [])
    run = lambda m: m(make_input() if make_input else x, hx)  # noqa: E731
    out_r, grad_r = _outputs_and_grads(ref, leaves, run)
    out_f, grad_f = _outputs_and_grads(fast, leaves, run)
    _assert_same(out_r, out_f, TOL[dtype])
    _assert_same(grad_r, grad_f, TOL[dtype])


CONFIGS = [
    dict(),
    dict(num_layers=2),
    dict(bidirectional=True),
    dict(num_layers=2, bidirectional=True, batch_first=True),
    dict(proj_size=3),
    dict(proj_size=2, num_layers=2, bidirectional=True),
    dict(bias=False, num_layers=2),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "plain")
def test_lstm_matches_torch(config, dtype):
    kwargs = dict(input_size=5, hidden_size=7, **config)
    T, B = 6, 3
    shape = (B, T, 5) if config.get("batch_first") else (T, B, 5)
    x = torch.randn(*shape, dtype=dtype, requires_grad=True)
    _check_against_torch(kwargs, x, dtype=dtype)
    # Given (h0, c0), gradients flow to them too.
    L = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
    P = kwargs.get("proj_size", 0) or 7
    hx = (torch.randn(L, B, P, dtype=dtype, requires_grad=True),
          torch.randn(L, B, 7, dtype=dtype, requires_grad=True))
    _check_against_torch(kwargs, x, hx, dtype=dtype)


def test_input_without_grad_skips_d_input():
    """First layer on data (no input gradient): parameter gradients still match torch."""
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    _check_against_torch(dict(input_size=4, hidden_size=6, num_layers=2, bidirectional=True), x,
                         dtype=torch.float64)


@pytest.mark.parametrize("config", [dict(), dict(proj_size=2, bidirectional=True, num_layers=2)])
def test_unbatched(config):
    kwargs = dict(input_size=4, hidden_size=5, **config)
    x = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    _check_against_torch(kwargs, x, dtype=torch.float64)
    L = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
    P = kwargs.get("proj_size", 0) or 5
    hx = (torch.randn(L, P, dtype=torch.float64, requires_grad=True),
          torch.randn(L, 5, dtype=torch.float64, requires_grad=True))
    _check_against_torch(kwargs, x, hx, dtype=torch.float64)


@pytest.mark.parametrize("T,B,I,H", [(1, 1, 1, 1), (1, 5, 3, 2), (13, 1, 7, 11), (5, 17, 3, 1),
                                     (3, 2, 19, 23), (4, 3, 5, 37)])
def test_odd_shapes(T, B, I, H):
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    _check_against_torch(dict(input_size=I, hidden_size=H, bidirectional=True), x, dtype=torch.float64)


def test_multithreaded_steps_match_torch():
    """Shapes large enough that a step's GEMM + gate pass is split over threads (the fused CPU
    path double-buffers h because of that), packed and bidirectional."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = torch.randn(6, 24, 32, requires_grad=True)
        _check_against_torch(dict(input_size=32, hidden_size=72, bidirectional=True), x)
        lengths = torch.tensor([6] * 8 + [4] * 8 + [1] * 8)
        _check_against_torch(dict(input_size=32, hidden_size=72, bidirectional=True), x,
                             make_input=lambda: pack_padded_sequence(x, lengths))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("packed", [False, True])
def test_inference_chunked_projection_matches_torch(packed):
    """no_grad runs project the input a few steps at a time (B * 4H large -> chunks of 4 steps
    here); chunk edges, reverse direction and packed lengths must not show."""
    ref, fast = _pair(dict(input_size=8, hidden_size=256, bidirectional=True, num_layers=2))
    x = torch.randn(10, 64, 8)
    lengths = torch.randint(1, 11, (64,))
    lengths[0] = 10
    make = (lambda: pack_padded_sequence(x, lengths, enforce_sorted=False)) if packed else (lambda: x)
    with torch.no_grad():
        _assert_same(_tensors(ref(make())), _tensors(fast(make())), TOL[torch.float32])


def test_non_contiguous_input_and_state():
    x = torch.randn(5, 6, 8, dtype=torch.float64)[:, ::2, ::2].requires_grad_()  # [5, 3, 4]
    h0 = torch.randn(3, 2, 6, dtype=torch.float64).transpose(0, 1).requires_grad_()
    c0 = torch.randn(3, 2, 6, dtype=torch.float64).transpose(0, 1).requires_grad_()
    assert not x.is_contiguous() and not h0.is_contiguous()
    _check_against_torch(dict(input_size=4, hidden_size=6, num_layers=2), x, (h0, c0), dtype=torch.float64)


def test_saturated_gates_stay_finite_and_match():
    """Huge pre-activations (|x| ~ 1e3) must saturate the fast float32 activations to 0/1/-1,
    never produce inf/NaN."""
    ref, fast = _pair(dict(input_size=3, hidden_size=20))
    x = torch.randn(5, 4, 3) * 1000
    out_r, out_f = ref(x)[0], fast(x)[0]
    assert torch.isfinite(out_f).all()
    torch.testing.assert_close(out_f, out_r, **TOL[torch.float32])


def test_empty_batch_as_torch():
    x = torch.randn(4, 0, 3, requires_grad=True)
    ref, fast = _pair(dict(input_size=3, hidden_size=5, bidirectional=True))
    out_r, (h_r, c_r) = ref(x)
    out_f, (h_f, c_f) = fast(x)
    assert out_f.shape == out_r.shape == (4, 0, 10) and h_f.shape == h_r.shape == (2, 0, 5)
    (out_f.sum() + h_f.sum() + c_f.sum()).backward()
    assert fast.weight_hh_l0.grad.abs().sum() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("config", [dict(), dict(bidirectional=True, num_layers=2),
                                    dict(proj_size=3, bidirectional=True), dict(batch_first=True)],
                         ids=["plain", "bi2", "proj_bi", "batch_first"])
@pytest.mark.parametrize("sorted_", [True, False])
def test_packed_sequence(config, dtype, sorted_):
    kwargs = dict(input_size=4, hidden_size=6, **config)
    lengths = torch.tensor([7, 5, 5, 2, 1]) if sorted_ else torch.tensor([2, 7, 1, 5, 5])
    batch_first = config.get("batch_first", False)
    x = torch.randn(*((5, 7, 4) if batch_first else (7, 5, 4)), dtype=dtype, requires_grad=True)
    make = lambda: pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=sorted_)  # noqa: E731
    _check_against_torch(kwargs, x, dtype=dtype, make_input=make)
    L = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
    P = kwargs.get("proj_size", 0) or 6
    hx = (torch.randn(L, 5, P, dtype=dtype, requires_grad=True),
          torch.randn(L, 5, 6, dtype=dtype, requires_grad=True))
    _check_against_torch(kwargs, x, hx, dtype=dtype, make_input=make)


def test_dropout_semantics():
    kwargs = dict(input_size=4, hidden_size=5, num_layers=3, dropout=0.5)
    ref, fast = _pair(kwargs, torch.float64)
    x = torch.randn(6, 3, 4, dtype=torch.float64)
    # eval: no dropout, identical to torch.
    ref.eval(), fast.eval()
    _assert_same(_tensors(ref(x)), _tensors(fast(x)), TOL[torch.float64])
    # training: the masks are random (different draws than torch), so runs differ...
    fast.train()
    a, b = fast(x)[0], fast(x)[0]
    assert not torch.equal(a, b)
    # ... except with p = 1, where every layer after the first sees zeros, as in torch.
    ref1, fast1 = _pair(dict(kwargs, dropout=1.0), torch.float64)
    _assert_same(_tensors(ref1(x)), _tensors(fast1(x)), TOL[torch.float64])


def test_state_dict_and_init_identical():
    kwargs = dict(input_size=3, hidden_size=4, num_layers=2, bidirectional=True, proj_size=2)
    torch.manual_seed(5)
    ref = torch.nn.LSTM(**kwargs)
    torch.manual_seed(5)
    fast = fnn.LSTM(**kwargs)
    assert list(ref.state_dict()) == list(fast.state_dict())
    for k, v in ref.state_dict().items():
        assert torch.equal(v, fast.state_dict()[k])
    other = fnn.LSTM(**kwargs)
    other.load_state_dict(ref.state_dict(), strict=True)
    ref.load_state_dict(fast.state_dict(), strict=True)


def test_bfloat16_error_within_twice_torch():
    torch.manual_seed(0)
    ref64, fast64 = _pair(dict(input_size=16, hidden_size=32, num_layers=2), torch.float64)
    x = torch.randn(10, 4, 16, dtype=torch.float64)
    truth = ref64(x)[0]
    ref_bf, fast_bf = ref64.to(torch.bfloat16), fast64.to(torch.bfloat16)
    err_torch = (ref_bf(x.bfloat16())[0].double() - truth).abs().max()
    err_fast = (fast_bf(x.bfloat16())[0].double() - truth).abs().max()
    assert err_fast <= 2 * err_torch + 1e-3, (err_fast, err_torch)


def test_float16_cpu_falls_back_to_torch():
    ref, fast = _pair(dict(input_size=3, hidden_size=4), torch.float16)
    x = torch.randn(5, 2, 3, dtype=torch.float16)
    torch.testing.assert_close(fast(x)[0], ref(x)[0])


@pytest.mark.parametrize("hidden", [64, 80], ids=["full_blocks", "partial_block"])
@pytest.mark.parametrize("reverse_too", [False, True], ids=["uni", "bi"])
def test_lstm_float32_fused_block_sizes(hidden, reverse_too):
    """The CPU float32 fused path packs W_hh into 16- and 64-wide blocks; hidden = 64 fills
    them exactly (no zero padding written), 80 leaves a partial one. Also covers the
    single weight-gradient GEMM over [x_t | h_{t-1}] in both directions."""
    kwargs = dict(input_size=24, hidden_size=hidden, bidirectional=reverse_too, num_layers=2)
    x = torch.randn(9, 5, 24, requires_grad=True)
    ref, fast = _pair(kwargs)
    leaves = [x]
    out_r, grad_r = _outputs_and_grads(ref, leaves, lambda m: m(x))
    out_f, grad_f = _outputs_and_grads(fast, leaves, lambda m: m(x))
    tol = dict(atol=1e-4, rtol=1e-3)  # sums over 4H = 256..320 terms in float32
    _assert_same(out_r, out_f, tol)
    _assert_same(grad_r, grad_f, tol)


# ---- LSTMCell ----

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batched", [True, False])
def test_lstm_cell_matches_torch(dtype, bias, batched):
    ref = torch.nn.LSTMCell(5, 7, bias=bias).to(dtype)
    fast = fnn.LSTMCell(5, 7, bias=bias).to(dtype)
    fast.load_state_dict(ref.state_dict())
    lead = (3,) if batched else ()
    x = torch.randn(*lead, 5, dtype=dtype, requires_grad=True)
    hx = (torch.randn(*lead, 7, dtype=dtype, requires_grad=True),
          torch.randn(*lead, 7, dtype=dtype, requires_grad=True))
    for state in (None, hx):
        leaves = [x] + (list(state) if state else [])
        out_r, g_r = _outputs_and_grads(ref, leaves, lambda m: m(x, state))
        out_f, g_f = _outputs_and_grads(fast, leaves, lambda m: m(x, state))
        _assert_same(out_r, out_f, TOL[dtype])
        _assert_same(g_r, g_f, TOL[dtype])


def test_lstm_cell_only_h_used():
    """Gradients when only h' (not c') reaches the loss, e.g. a decoder step."""
    ref = torch.nn.LSTMCell(3, 4).double()
    fast = fnn.LSTMCell(3, 4).double()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, dtype=torch.float64)
    g_r = torch.autograd.grad(ref(x)[0].sum(), list(ref.parameters()))
    g_f = torch.autograd.grad(fast(x)[0].sum(), list(fast.parameters()))
    _assert_same(g_r, g_f, TOL[torch.float64])


@pytest.mark.parametrize("needs", [(False, False), (True, False), (False, True)])
def test_lstm_cell_skips_unwanted_grads(needs):
    """The C++ cell node skips the d_input / d_h GEMMs for inputs that need no gradient; the
    gradients that are wanted must still match torch's, over two chained steps."""
    ref = torch.nn.LSTMCell(5, 6).double()
    fast = fnn.LSTMCell(5, 6).double()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=needs[0])
    h = torch.randn(3, 6, dtype=torch.float64, requires_grad=needs[1])
    c = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    leaves = [t for t in (x, h, c) if t.requires_grad]

    def two_steps(m):
        h1, c1 = m(x, (h, c))
        h2, c2 = m(x, (h1, c1))
        return torch.autograd.grad((h2 * 1.5 + c2).sum(), leaves + list(m.parameters()))
    _assert_same(two_steps(ref), two_steps(fast), TOL[torch.float64])


def test_lstm_cell_node_gradcheck():
    mk = lambda *s: torch.randn(*s, dtype=torch.float64, requires_grad=True)  # noqa: E731
    args = (mk(2, 3), mk(2, 4), mk(2, 4), mk(16, 3), mk(16, 4), mk(16), None)
    assert torch.autograd.gradcheck(lambda *a: fastseq._C.lstm_cell(*a), args)


# ---- the ops: gradcheck, opcheck, reference ----

def _layer_args(T=4, B=3, I=3, H=4, P=None, dtype=torch.float64, lengths=None, reverse=False,
                bias=True, device="cpu"):
    P = P or H
    mk = lambda *s: torch.randn(*s, dtype=dtype, device=device, requires_grad=True)  # noqa: E731
    bs = None
    if lengths is not None:
        bs = torch.tensor([sum(1 for n in lengths if n > t) for t in range(T)], dtype=torch.int64)
    return (mk(T, B, I), mk(B, P), mk(B, H), mk(4 * H, I) * 0.5, mk(4 * H, P) * 0.5,
            mk(4 * H) if bias else None, mk(4 * H) if bias else None,
            mk(P, H) * 0.5 if P != H else None, bs, reverse)


LAYER_CASES = {
    "plain": dict(),
    "reverse": dict(reverse=True),
    "proj": dict(P=2),
    "packed": dict(lengths=[4, 3, 1]),
    "packed_reverse_proj": dict(lengths=[4, 2, 2], reverse=True, P=3),
    "no_bias_T1": dict(T=1, bias=False),
}


def _leafify(args):
    return tuple(a.detach().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                 for a in args)


@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_layer_op_matches_reference(case):
    args = _leafify(_layer_args(**LAYER_CASES[case]))
    out, h, c, _, _ = ops.lstm_layer_forward(*args)
    w = args[3:8]
    ref_out, (ref_h, ref_c) = lstm_layer_reference(args[0], (args[1], args[2]), w, args[8], args[9])
    _assert_same([ref_out, ref_h, ref_c], [out, h, c], TOL[torch.float64])


@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_layer_op_gradcheck(case):
    args = _leafify(_layer_args(**LAYER_CASES[case]))
    fn = lambda *a: ops.lstm_layer_forward(*a)[:3]  # noqa: E731
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7)


def test_cell_op_gradcheck():
    mk = lambda *s: torch.randn(*s, dtype=torch.float64, requires_grad=True)  # noqa: E731
    args = (mk(3, 5), mk(3, 4), mk(3, 4), mk(16, 5), mk(16, 4), mk(16), mk(16))
    assert torch.autograd.gradcheck(lambda *a: ops.lstm_cell_forward(*a)[:2], args)
    assert torch.autograd.gradcheck(lambda *a: ops.lstm_cell(*a), args)


@pytest.mark.parametrize("case", ["plain", "packed_reverse_proj", "no_bias_T1"])
def test_layer_opcheck(case):
    args = _leafify(_layer_args(dtype=torch.float32, **LAYER_CASES[case]))
    torch.library.opcheck(torch.ops.fastseq.lstm_layer_forward.default, args)
    with torch.no_grad():
        out, h, c, gates, cells = ops.lstm_layer_forward(*args)
    inp, h0, c0, w_ih, w_hh, b_ih, _, w_hr, bs, reverse = [a.detach() if isinstance(a, torch.Tensor) else a
                                                           for a in args]
    bw_args = (torch.randn_like(out), torch.randn_like(h), None, inp, h0, c0, w_ih, w_hh, w_hr, bs,
               reverse, b_ih is not None, out, gates, cells, True)
    torch.library.opcheck(torch.ops.fastseq.lstm_layer_backward.default, bw_args)
    torch.library.opcheck(torch.ops.fastseq.lstm_layer_backward.default, bw_args[:-1] + (False,))


def test_cell_opcheck():
    mk = lambda *s: torch.randn(*s, requires_grad=True)  # noqa: E731
    args = (mk(3, 5), mk(3, 4), mk(3, 4), mk(16, 5), mk(16, 4), mk(16), None)
    torch.library.opcheck(torch.ops.fastseq.lstm_cell_forward.default, args)
    with torch.no_grad():
        h, c, gates = ops.lstm_cell_forward(*args)
    d = [a.detach() for a in args[:5]]
    torch.library.opcheck(torch.ops.fastseq.lstm_cell_backward.default,
                          (torch.randn_like(h), None, *d, True, gates, c))


# ---- torch.compile ----

class _TinyTagger(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = fnn.LSTM(6, 8, num_layers=2, bidirectional=True, batch_first=True)
        self.cell = fnn.LSTMCell(16, 8)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x):
        y, _ = self.lstm(x)
        h, c = self.cell(y[:, -1])
        return self.head(h)


def test_torch_compile_fullgraph_matches_eager():
    model = _TinyTagger()
    x = torch.randn(2, 5, 6)
    eager = model(x)
    g_eager = torch.autograd.grad(eager.sum(), list(model.parameters()))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    g_comp = torch.autograd.grad(out.sum(), list(model.parameters()))
    _assert_same([eager], [out], TOL[torch.float32])
    _assert_same(g_eager, g_comp, TOL[torch.float32])


# ---- devices (CUDA cases skip without a GPU) ----

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lstm_on_device(device, dtype):
    x = torch.randn(6, 3, 5, dtype=dtype, device=device, requires_grad=True)
    _check_against_torch(dict(input_size=5, hidden_size=7, num_layers=2, bidirectional=True, proj_size=3),
                         x, dtype=dtype)
    lengths = torch.tensor([6, 4, 1])
    _check_against_torch(dict(input_size=5, hidden_size=7, bidirectional=True), x, dtype=dtype,
                         make_input=lambda: pack_padded_sequence(x, lengths))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_on_device(device, dtype):
    if device.type == "cpu" and dtype == torch.float16:
        pytest.skip("float16 on CPU falls back to torch (see test_float16_cpu_falls_back_to_torch)")
    ref64, fast64 = _pair(dict(input_size=16, hidden_size=32), torch.float64, device)
    x = torch.randn(10, 4, 16, dtype=torch.float64, device=device)
    truth = ref64(x)[0]
    err_torch = (ref64.to(dtype)(x.to(dtype))[0].double() - truth).abs().max()
    err_fast = (fast64.to(dtype)(x.to(dtype))[0].double() - truth).abs().max()
    assert err_fast <= 2 * err_torch + 1e-3, (err_fast, err_torch)


def test_lstm_cell_on_device(device):
    ref = torch.nn.LSTMCell(5, 7).to(device)
    fast = fnn.LSTMCell(5, 7).to(device)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(3, 5, device=device, requires_grad=True)
    out_r, g_r = _outputs_and_grads(ref, [x], lambda m: m(x))
    out_f, g_f = _outputs_and_grads(fast, [x], lambda m: m(x))
    _assert_same(out_r, out_f, TOL[torch.float32])
    _assert_same(g_r, g_f, TOL[torch.float32])
