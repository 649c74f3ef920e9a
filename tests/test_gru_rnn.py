"""Fused GRU / RNN (tanh, relu) against torch.nn.GRU / RNN / GRUCell / RNNCell and the pure-torch
references: outputs, final states and every gradient; float64 gradcheck; opcheck; odd shapes."""
import itertools

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fastseq.nn as fnn
from conftest import recurrent_pair, requires_cuda
from fastseq.nn._recurrent import run_recurrent_stack
from fastseq.ops import gru as gru_ops, rnn as rnn_ops
from fastseq.ops.reference_gru_rnn import (gru_cell_reference, gru_layer_reference,
                                           rnn_cell_reference, rnn_layer_reference)

KINDS = ["gru", "rnn_tanh", "rnn_relu"]
TOL = {torch.float32: dict(rtol=2e-5, atol=2e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}


make_pair = recurrent_pair  # conftest.py


def op_call(kind):
    """(fused layer op, matching pure-torch layer_fn) for one kind."""
    if kind == "gru":
        return gru_ops.gru, lambda x, h, w, bs, rev: gru_layer_reference(x, (h,), w, bs, rev)
    nl = kind.split("_")[1]
    return ((lambda *a, **k: rnn_ops.rnn(*a, nonlinearity=nl, **k)),
            lambda x, h, w, bs, rev: rnn_layer_reference(nl)(x, (h,), w, bs, rev))


def layer_weights(kind, I, H, bias, dtype, device="cpu", scale=0.5):
    G = 3 if kind == "gru" else 1
    mk = lambda *s: (torch.randn(*s, dtype=dtype, device=device) * scale).requires_grad_()
    return (mk(G * H, I), mk(G * H, H), mk(G * H) if bias else None, mk(G * H) if bias else None)


def grads_of(outputs, inputs, seed_grads):
    return torch.autograd.grad(outputs, [t for t in inputs if t is not None], seed_grads, allow_unused=False)


def assert_close_all(a, b, **tol):
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        torch.testing.assert_close(x, y, **tol, msg=lambda m: f"item {i}: {m}")


# ---------------------------------------------------------------- op level


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_op_gradcheck_float64(kind, reverse, packed, bias):
    T, B, I, H = 4, 3, 2, 5
    fused, _ = op_call(kind)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
    w = layer_weights(kind, I, H, bias, torch.float64)
    bs = torch.tensor([3, 2, 2, 1]) if packed else None
    fn = lambda x, h0, *w: fused(x, h0, *w, batch_sizes=bs, reverse=reverse)
    assert torch.autograd.gradcheck(fn, (x, h0, *w))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (7, 5, 3, 11), (3, 2, 4, 37), (2, 3, 17, 16)],
                         ids=lambda s: "TBIH=" + "x".join(map(str, s)))
@pytest.mark.parametrize("reverse,packed", [(False, False), (True, False), (False, True), (True, True)])
def test_op_matches_reference(device, kind, dtype, shape, reverse, packed):
    T, B, I, H = shape
    fused, reference = op_call(kind)
    x = torch.randn(T, B, I, dtype=dtype, device=device, requires_grad=True)
    h0 = torch.randn(B, H, dtype=dtype, device=device, requires_grad=True)
    w = layer_weights(kind, I, H, True, dtype, device)
    bs = torch.sort(torch.randint(0, B + 1, (T,)), descending=True).values if packed else None
    if packed:
        bs[0] = B
    out, hn = fused(x, h0, *w, batch_sizes=bs, reverse=reverse)
    ref_out, (ref_hn,) = reference(x, h0, w, bs, reverse)
    assert_close_all([out, hn], [ref_out, ref_hn], **TOL[dtype])
    seeds = [torch.randn_like(out), torch.randn_like(hn)]
    inputs = [x, h0, *w]
    assert_close_all(grads_of([out, hn], inputs, seeds), grads_of([ref_out, ref_hn], inputs, seeds), **TOL[dtype])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reverse,packed", [(False, False), (True, True)])
def test_op_several_chunks_match_reference(kind, reverse, packed):
    # Big enough that the loops split the sequence into several chunks of steps (a few MB
    # each): forward's input projection and backward's weight gradients cross chunk borders.
    T, B, I, H = 41, 64, 5, 131
    fused, reference = op_call(kind)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
    # torch.nn's init scale: keeps 41 steps of H = 131 from amplifying rounding chaotically.
    w = layer_weights(kind, I, H, True, torch.float64, scale=H ** -0.5)
    bs = torch.sort(torch.randint(1, B + 1, (T,)), descending=True).values if packed else None
    out, hn = fused(x, h0, *w, batch_sizes=bs, reverse=reverse)
    ref_out, (ref_hn,) = reference(x, h0, w, bs, reverse)
    assert_close_all([out, hn], [ref_out, ref_hn], **TOL[torch.float64])
    seeds = [torch.randn_like(out), torch.randn_like(hn)]
    inputs = [x, h0, *w]
    assert_close_all(grads_of([out, hn], inputs, seeds), grads_of([ref_out, ref_hn], inputs, seeds),
                     **TOL[torch.float64])


@pytest.mark.parametrize("kind", KINDS)
def test_op_zero_length_and_empty_batch(kind):
    fused, _ = op_call(kind)
    H = 4
    for T, B in [(0, 3), (3, 0)]:
        x = torch.randn(T, B, 2, dtype=torch.float64, requires_grad=True)
        h0 = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
        w = layer_weights(kind, 2, H, True, torch.float64)
        out, hn = fused(x, h0, *w)
        assert out.shape == (T, B, H)
        torch.testing.assert_close(hn, h0)
        (out.sum() + (hn * 2).sum()).backward()
        torch.testing.assert_close(h0.grad, torch.full_like(h0, 2.0))
        assert all(float(t.grad.abs().sum()) == 0 for t in w if t is not None)


@pytest.mark.parametrize("kind", KINDS)
def test_op_noncontiguous_inputs(kind):
    fused, reference = op_call(kind)
    T, B, I, H = 5, 4, 3, 6
    x = torch.randn(B, T, 2 * I, dtype=torch.float64)[:, :, ::2].transpose(0, 1).requires_grad_()
    h0 = torch.randn(H, B, dtype=torch.float64).t().requires_grad_()
    w_ih, w_hh, b_ih, b_hh = layer_weights(kind, I, H, True, torch.float64)
    w_hh_nc = w_hh.detach().t().contiguous().t().requires_grad_()   # transposed strides
    assert not x.is_contiguous() and not h0.is_contiguous() and not w_hh_nc.is_contiguous()
    out, hn = fused(x, h0, w_ih, w_hh_nc, b_ih, b_hh)
    ref_out, (ref_hn,) = reference(x, h0, (w_ih, w_hh_nc, b_ih, b_hh), None, False)
    assert_close_all([out, hn], [ref_out, ref_hn], **TOL[torch.float64])


def test_opcheck_gru():
    T, B, I, H = 3, 2, 3, 4
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
    w = layer_weights("gru", I, H, True, torch.float64)
    for bs, rev in [(None, False), (torch.tensor([2, 2, 1]), True)]:
        torch.library.opcheck(torch.ops.fastseq.gru_forward, (x, h0, *w, bs, rev, True))
    out, hn, ws = torch.ops.fastseq.gru_forward(x, h0, *w, None, False, True)
    torch.library.opcheck(torch.ops.fastseq.gru_backward,
                          (torch.randn_like(out), torch.randn_like(hn), x.detach(), h0.detach(), w[0].detach(),
                           w[1].detach(), out.detach(), ws.detach(), None, False, True, True))


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_opcheck_rnn(nonlinearity):
    T, B, I, H = 3, 2, 3, 4
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(B, H, dtype=torch.float64, requires_grad=True)
    w = layer_weights("rnn", I, H, True, torch.float64)
    for bs, rev in [(None, False), (torch.tensor([2, 2, 1]), True)]:
        torch.library.opcheck(torch.ops.fastseq.rnn_forward, (x, h0, *w, bs, rev, nonlinearity))
    out, hn = torch.ops.fastseq.rnn_forward(x, h0, *w, None, False, nonlinearity)
    torch.library.opcheck(torch.ops.fastseq.rnn_backward,
                          (torch.randn_like(out), torch.randn_like(hn), x.detach(), h0.detach(), w[0].detach(),
                           w[1].detach(), out.detach(), None, False, nonlinearity, True, False))


@pytest.mark.parametrize("kind", ["gru", "rnn_relu"])
def test_compiles_without_graph_breaks(kind):
    ref, fast = make_pair(kind, 3, 5, num_layers=2, bidirectional=True)
    x = torch.randn(4, 2, 3, requires_grad=True)
    # Dynamo refuses any torch.nn.RNNBase subclass unless allow_rnn is set (its own rule,
    # made for torch's modules); with it, the fused layers trace as one graph.
    with torch._dynamo.config.patch(allow_rnn=True):
        compiled = torch.compile(fast, backend="aot_eager", fullgraph=True)
        out, hn = compiled(x)
    ref_out, ref_hn = ref(x)
    assert_close_all([out, hn], [ref_out, ref_hn], **TOL[torch.float32])
    g = [torch.randn_like(out), torch.randn_like(hn)]
    assert_close_all(grads_of([out, hn], [x, *fast.parameters()], g),
                     grads_of([ref_out, ref_hn], [x, *ref.parameters()], g), **TOL[torch.float32])


@pytest.mark.parametrize("kind", KINDS)
def test_functional_op_compiles_without_graph_breaks(kind):
    fused, reference = op_call(kind)
    x = torch.randn(4, 2, 3, requires_grad=True)
    h0 = torch.randn(2, 5, requires_grad=True)
    w = layer_weights(kind, 3, 5, True, torch.float32)
    bs = torch.tensor([2, 2, 1, 1])
    compiled = torch.compile(lambda *a: fused(*a, batch_sizes=bs, reverse=True), backend="aot_eager",
                             fullgraph=True)
    out, hn = compiled(x, h0, *w)
    ref_out, (ref_hn,) = reference(x, h0, w, bs, True)
    assert_close_all([out, hn], [ref_out, ref_hn], **TOL[torch.float32])
    g = [torch.randn_like(out), torch.randn_like(hn)]
    assert_close_all(grads_of([out, hn], [x, h0, *w], g), grads_of([ref_out, ref_hn], [x, h0, *w], g),
                     **TOL[torch.float32])


# ---------------------------------------------------------------- modules vs torch


CONFIGS = [
    dict(num_layers=1),
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=3, batch_first=True, bias=False),
    dict(num_layers=2, bidirectional=True, batch_first=True, dropout=0.5),  # eval: dropout is off
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("with_hx", [False, True])
def test_module_matches_torch(device, kind, cfg, with_hx):
    T, B, I, H = 6, 3, 5, 7
    ref, fast = make_pair(kind, I, H, **cfg)
    ref, fast = ref.to(device).eval(), fast.to(device).eval()
    D = 2 if cfg.get("bidirectional") else 1
    shape = (B, T, I) if cfg.get("batch_first") else (T, B, I)
    x = torch.randn(*shape, device=device, requires_grad=True)
    hx = torch.randn(cfg["num_layers"] * D, B, H, device=device, requires_grad=True) if with_hx else None
    out, hn = fast(x, hx)
    ref_out, ref_hn = ref(x, hx)
    assert_close_all([out, hn], [ref_out, ref_hn], **TOL[torch.float32])
    g = [torch.randn_like(out), torch.randn_like(hn)]
    inputs = [x] + ([hx] if with_hx else [])
    assert_close_all(grads_of([out, hn], inputs + list(fast.parameters()), g),
                     grads_of([ref_out, ref_hn], inputs + list(ref.parameters()), g), **TOL[torch.float32])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_module_packed_sequence(device, kind, enforce_sorted):
    T, B, I, H = 7, 4, 3, 5
    ref, fast = make_pair(kind, I, H, num_layers=2, bidirectional=True)
    ref, fast = ref.to(device), fast.to(device)
    lengths = [7, 5, 5, 2] if enforce_sorted else [2, 7, 1, 5]
    x = torch.randn(T, B, I, device=device, requires_grad=True)
    hx = torch.randn(4, B, H, device=device, requires_grad=True)
    pack = lambda: pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    out, hn = fast(pack(), hx)
    ref_out, ref_hn = ref(pack(), hx)
    torch.testing.assert_close(out.batch_sizes, ref_out.batch_sizes)
    assert_close_all([out.data, hn], [ref_out.data, ref_hn], **TOL[torch.float32])
    padded, _ = pad_packed_sequence(out)
    ref_padded, _ = pad_packed_sequence(ref_out)
    g = [torch.randn_like(padded), torch.randn_like(hn)]
    inputs = [x, hx]
    assert_close_all(grads_of([padded, hn], inputs + list(fast.parameters()), g),
                     grads_of([ref_padded, ref_hn], inputs + list(ref.parameters()), g), **TOL[torch.float32])


@pytest.mark.parametrize("kind", KINDS)
def test_module_unbatched(kind):
    ref, fast = make_pair(kind, 3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 3, requires_grad=True)
    for hx in [None, torch.randn(4, 4)]:
        out, hn = fast(x, hx)
        ref_out, ref_hn = ref(x, hx)
        assert out.shape == ref_out.shape and hn.shape == ref_hn.shape
        assert_close_all([out, hn], [ref_out, ref_hn], **TOL[torch.float32])


@pytest.mark.parametrize("kind", KINDS)
def test_module_empty_batch(kind):
    ref, fast = make_pair(kind, 3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 0, 3, requires_grad=True)
    out, hn = fast(x)
    ref_out, ref_hn = ref(x)
    assert out.shape == ref_out.shape and hn.shape == ref_hn.shape
    (out.sum() + hn.sum()).backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) == 0 for p in fast.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_module_float64_gradcheck(kind):
    _, fast = make_pair(kind, 2, 3, num_layers=2, bidirectional=True)
    fast = fast.double()
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    hx = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    params = list(fast.parameters())

    def fn(x, hx, *ps):
        names = [n for n, _ in fast.named_parameters()]
        out, hn = torch.func.functional_call(fast, dict(zip(names, ps)), (x, hx))
        return out, hn
    assert torch.autograd.gradcheck(fn, (x, hx, *params))


@pytest.mark.parametrize("kind", KINDS)
def test_module_training_dropout_one_zeroes_between_layers(kind):
    # p = 1 makes the dropout masks deterministic (all zero), so torch's and fastseq's
    # training-mode dropout must agree exactly; it fails if dropout is skipped or misplaced.
    ref, fast = make_pair(kind, 3, 4, num_layers=2, dropout=1.0)
    x = torch.randn(5, 2, 3, requires_grad=True)
    out, hn = fast.train()(x)
    ref_out, ref_hn = ref.train()(x)
    assert_close_all([out, hn], [ref_out, ref_hn], **TOL[torch.float32])
    fast.eval()
    assert not torch.allclose(fast(x)[0], out)


@pytest.mark.parametrize("kind", KINDS)
def test_module_same_init_and_strict_state_dict(kind):
    torch.manual_seed(3)
    ref = torch.nn.GRU(4, 6, 2, bidirectional=True) if kind == "gru" else \
        torch.nn.RNN(4, 6, 2, nonlinearity=kind.split("_")[1], bidirectional=True)
    torch.manual_seed(3)
    fast = fnn.GRU(4, 6, 2, bidirectional=True) if kind == "gru" else \
        fnn.RNN(4, 6, 2, nonlinearity=kind.split("_")[1], bidirectional=True)
    assert isinstance(fast, type(ref))
    assert list(fast.state_dict()) == list(ref.state_dict())
    for (n1, p1), (n2, p2) in zip(fast.named_parameters(), ref.named_parameters()):
        assert n1 == n2
        torch.testing.assert_close(p1, p2, rtol=0, atol=0)
    other = torch.nn.GRU(4, 6, 2, bidirectional=True) if kind == "gru" else torch.nn.RNN(4, 6, 2, bidirectional=True)
    fast.load_state_dict(other.state_dict(), strict=True)
    torch.testing.assert_close(fast.weight_hh_l1_reverse, other.weight_hh_l1_reverse)


def test_module_bfloat16_error_within_twice_torch():
    for kind in KINDS:
        ref, fast = make_pair(kind, 16, 24, num_layers=2)
        x = torch.randn(9, 4, 16)
        exact, _ = make_pair(kind, 16, 24, num_layers=2)
        exact.load_state_dict(ref.state_dict())
        want = exact.double()(x.double())[0]
        got = fast.bfloat16()(x.bfloat16())[0].double()
        torch_bf16 = ref.bfloat16()(x.bfloat16())[0].double()
        err, torch_err = (got - want).abs().max(), (torch_bf16 - want).abs().max()
        assert err <= 2 * torch_err + 1e-3, (kind, float(err), float(torch_err))


def test_module_float16_cpu_falls_back_to_torch():
    ref, fast = make_pair("gru", 3, 4)
    x = torch.randn(2, 2, 3).half()
    torch.testing.assert_close(fast.half()(x)[0], ref.half()(x)[0])


def test_functional_stack_with_reference_layer_matches_torch():
    # The shared driver with the pure-torch reference layer reproduces torch.nn.GRU: the
    # reference used by the op tests is itself right.
    ref, fast = make_pair("gru", 3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 2, 3)
    out, hn = run_recurrent_stack(fast, x, None, gru_layer_reference)
    assert_close_all([out, hn], list(ref(x)), **TOL[torch.float32])


# ---------------------------------------------------------------- cells


def cell_pair(kind, I, H, bias=True):
    if kind == "gru":
        ref, fast = torch.nn.GRUCell(I, H, bias=bias), fnn.GRUCell(I, H, bias=bias)
    else:
        nl = kind.split("_")[1]
        ref, fast = torch.nn.RNNCell(I, H, bias, nl), fnn.RNNCell(I, H, bias, nl)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batched,with_hx", list(itertools.product([True, False], [True, False])))
def test_cell_matches_torch(device, kind, bias, batched, with_hx):
    ref, fast = cell_pair(kind, 5, 19, bias)
    ref, fast = ref.to(device), fast.to(device)
    x = torch.randn(*((3, 5) if batched else (5,)), device=device, requires_grad=True)
    hx = torch.randn(*((3, 19) if batched else (19,)), device=device, requires_grad=True) if with_hx else None
    h = fast(x, hx)
    ref_h = ref(x, hx)
    torch.testing.assert_close(h, ref_h, **TOL[torch.float32])
    g = torch.randn_like(h)
    inputs = [x] + ([hx] if with_hx else [])
    assert_close_all(grads_of([h], inputs + list(fast.parameters()), [g]),
                     grads_of([ref_h], inputs + list(ref.parameters()), [g]), **TOL[torch.float32])


@pytest.mark.parametrize("kind", KINDS)
def test_cell_gradcheck_float64_and_reference(kind):
    _, fast = cell_pair(kind, 3, 4)
    fast = fast.double()
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    hx = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    w = (fast.weight_ih, fast.weight_hh, fast.bias_ih, fast.bias_hh)
    if kind == "gru":
        want = gru_cell_reference(x, hx, *w)
    else:
        want = rnn_cell_reference(x, hx, *w, nonlinearity=kind.split("_")[1])
    torch.testing.assert_close(fast(x, hx), want, **TOL[torch.float64])
    assert torch.autograd.gradcheck(lambda x, hx: fast(x, hx), (x, hx))


def test_cell_decoder_loop_matches_torch():
    # A Python loop of steps (the cells' hot path), with backward through all of it.
    ref, fast = cell_pair("gru", 4, 6)
    xs = torch.randn(8, 2, 4, requires_grad=True)
    h_ref = h_fast = torch.zeros(2, 6)
    for t in range(8):
        h_ref, h_fast = ref(xs[t], h_ref), fast(xs[t], h_fast)
    torch.testing.assert_close(h_fast, h_ref, **TOL[torch.float32])
    assert_close_all(grads_of([h_fast.sum()], [xs, *fast.parameters()], None),
                     grads_of([h_ref.sum()], [xs, *ref.parameters()], None), **TOL[torch.float32])


@requires_cuda
def test_cuda_half_matches_torch_within_twice_error():
    for kind in KINDS:
        for dtype in (torch.float16, torch.bfloat16):
            ref, fast = make_pair(kind, 16, 24, num_layers=2)
            exact, _ = make_pair(kind, 16, 24, num_layers=2)
            exact.load_state_dict(ref.state_dict())
            x = torch.randn(9, 4, 16, device="cuda")
            want = exact.cuda().double()(x.double())[0]
            got = fast.cuda().to(dtype)(x.to(dtype))[0].double()
            torch_low = ref.cuda().to(dtype)(x.to(dtype))[0].double()
            assert (got - want).abs().max() <= 2 * (torch_low - want).abs().max() + 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_when_input_or_state_needs_none(kind):
    # Backward skips the GEMMs of d input / d h0 when autograd does not want them; the
    # gradients it still returns must be unaffected.
    ref, fast = make_pair(kind, 3, 4, num_layers=2)
    x = torch.randn(5, 2, 3)
    hx = torch.randn(2, 2, 4, requires_grad=True)
    for inputs in ([x, hx], [x.requires_grad_(), None]):
        out, hn = fast(*inputs)
        ref_out, ref_hn = ref(*inputs)
        wanted = [t for t in inputs if t is not None and t.requires_grad]
        g = [torch.randn_like(out), torch.randn_like(hn)]
        assert_close_all(grads_of([out, hn], wanted + list(fast.parameters()), g),
                         grads_of([ref_out, ref_hn], wanted + list(ref.parameters()), g), **TOL[torch.float32])
    rc, fc = cell_pair(kind, 3, 4)
    h = torch.randn(2, 4, requires_grad=True)
    xc = torch.randn(2, 3)
    g = torch.randn(2, 4)
    assert_close_all(grads_of([fc(xc, h)], [h, *fc.parameters()], [g]),
                     grads_of([rc(xc, h)], [h, *rc.parameters()], [g]), **TOL[torch.float32])
