"""The CPU sequence engine (csrc/recurrent/) behind LSTM, GRU and RNN, against torch: odd sizes
(H = 1, 3, 17, 100, 513; B = 1; T = 1; input size != hidden size), packed sequences with many
lengths, bidirectional and stacked layers, forward and every gradient, float64 and float32,
with the thread team forced on at every size, and results independent of the thread count."""
import contextlib
import copy

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fastseq
import fastseq.nn as fnn
from conftest import recurrent_pair

KINDS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]
TOL = {torch.float32: dict(rtol=5e-5, atol=5e-5), torch.float64: dict(rtol=1e-9, atol=1e-9)}


@contextlib.contextmanager
def engine_settings(threads=None, min_macs_per_thread=None, input_projection=None):
    """Thread count and the engine's settings (cost-model threshold, how the input projection
    runs), restored afterwards."""
    old_threads = torch.get_num_threads()
    old = fastseq._C.recurrent_engine_settings()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        fastseq._C.set_recurrent_engine_settings(min_macs_per_thread=min_macs_per_thread,
                                                 input_projection=input_projection)
        yield
    finally:
        torch.set_num_threads(old_threads)
        fastseq._C.set_recurrent_engine_settings(**old)


# Both ways the engine runs the input projection: large GEMMs over chunks of steps, and
# accumulated inside each step's micro-kernel (LSTM / RNN; GRU always takes the GEMMs).
PROJECTIONS = ["gemm", "fused"]


make_pair = recurrent_pair  # conftest.py


def run(module, x, lengths=None):
    """Output, final states and the gradients of a fixed random loss w.r.t. input and weights."""
    x = x.detach().clone().requires_grad_()
    inp = x if lengths is None else pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, state = module(inp)
    if lengths is not None:
        out, _ = pad_packed_sequence(out, total_length=x.shape[0])
    states = state if isinstance(state, tuple) else (state,)
    g = torch.Generator().manual_seed(1)
    loss = (out * torch.randn(out.shape, generator=g).to(out.dtype)).sum()
    loss = loss + sum((s * torch.randn(s.shape, generator=g).to(s.dtype)).sum() for s in states)
    grads = torch.autograd.grad(loss, [x, *module.parameters()])
    return [out.detach(), *[s.detach() for s in states], *grads]


def assert_all_close(a, b, **tol):
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        torch.testing.assert_close(x, y, **tol, msg=lambda m: f"item {i}: {m}")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("H", [1, 3, 17, 100, 513])
@pytest.mark.parametrize("projection", PROJECTIONS)
def test_odd_hidden_sizes_float64(kind, H, projection):
    T, B, I = (4, 2, 5) if H == 513 else (5, 3, 7)  # T >= 4: the engine runs (kMinEngineSteps)
    ref, fast = make_pair(kind, I, H, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    with engine_settings(min_macs_per_thread=1, input_projection=projection):
        assert_all_close(run(fast, x), run(ref, x), **TOL[torch.float64])


@pytest.mark.parametrize("kind", KINDS)
# T = 1 and 3 run the per-step loops (below kMinEngineSteps, LSTM included), the others the engine.
@pytest.mark.parametrize("T,B,I,H", [(1, 1, 3, 5), (3, 7, 2, 16), (4, 1, 1, 33), (9, 1, 1, 33), (5, 13, 20, 8)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("projection", PROJECTIONS)
def test_small_and_degenerate_shapes(kind, T, B, I, H, dtype, projection):
    ref, fast = make_pair(kind, I, H, dtype=dtype)
    x = torch.randn(T, B, I, dtype=dtype)
    with engine_settings(min_macs_per_thread=1, input_projection=projection):
        assert_all_close(run(fast, x), run(ref, x), **TOL[dtype])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("projection", PROJECTIONS)
def test_packed_many_lengths(kind, bidirectional, projection):
    T, B, I, H = 11, 9, 6, 20
    ref, fast = make_pair(kind, I, H, num_layers=2, bidirectional=bidirectional, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64)
    lengths = torch.tensor([11, 1, 7, 3, 11, 9, 2, 5, 4])  # unsorted, repeated, 1 and T
    with engine_settings(min_macs_per_thread=1, input_projection=projection):
        assert_all_close(run(fast, x, lengths), run(ref, x, lengths), **TOL[torch.float64])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("projection", PROJECTIONS)
def test_batch_first_stacked_float32(kind, projection):
    ref, fast = make_pair(kind, 24, 48, num_layers=3, batch_first=True)
    x = torch.randn(5, 12, 24)
    with engine_settings(min_macs_per_thread=1, input_projection=projection):
        assert_all_close(run(fast, x), run(ref, x), **TOL[torch.float32])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(6, 1, 10, 37), (8, 16, 32, 64), (4, 33, 16, 130)])
def test_thread_count_does_not_change_results(kind, shape):
    """1 and 2 threads agree to float tolerance (the library GEMMs of the input projection and
    the weight gradients may block their sums differently per thread count)."""
    T, B, I, H = shape
    _, fast = make_pair(kind, I, H)
    x = torch.randn(T, B, I)
    with engine_settings(threads=1):
        one = run(fast, x)
    with engine_settings(threads=2, min_macs_per_thread=1):
        two = run(fast, x)
    assert_all_close(two, one, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_nan_in_state_reaches_output(kind):
    ref, fast = make_pair(kind, 4, 19)
    x = torch.randn(5, 5, 4)
    x[1, 2, 0] = float("nan")
    with torch.no_grad(), engine_settings(min_macs_per_thread=1):
        a, b = fast(x)[0], ref(x)[0]
    assert torch.equal(a.isnan(), b.isnan())


def test_settings_are_validated():
    with pytest.raises(RuntimeError, match="min_macs_per_thread must be >= 1, got 0"):
        fastseq._C.set_recurrent_engine_settings(0)
    with pytest.raises(RuntimeError, match='input_projection must be "auto", "fused" or "gemm", got "fast"'):
        fastseq._C.set_recurrent_engine_settings(input_projection="fast")
    assert fastseq._C.recurrent_engine_settings()["input_projection"] == "auto"


@pytest.mark.parametrize("kind", ["lstm", "rnn_tanh"])
def test_fused_and_gemm_projections_agree_float32(kind):
    """The two ways of running the input projection give torch's answer in float32 at a size
    where the cost model picks the fused one (B >= 16), forward and every gradient."""
    ref, fast = make_pair(kind, 48, 64, num_layers=2, bidirectional=True)
    x = torch.randn(7, 20, 48)
    expected = run(ref, x)
    for projection in ["auto", *PROJECTIONS]:
        with engine_settings(input_projection=projection):
            assert_all_close(run(fast, x), expected, **TOL[torch.float32])


@pytest.mark.parametrize("kind", KINDS)
def test_bfloat16_error_at_most_twice_torchs(kind):
    """bfloat16 layers (float32 compute on CPU) against a float64 reference: at most twice
    the error of torch's own bfloat16 layer, on the output and on the input gradient."""
    T, B, I, H = 20, 8, 32, 64
    ref, fast = make_pair(kind, I, H, num_layers=2)
    x = torch.randn(T, B, I)
    exact = run(copy.deepcopy(ref).double(), x.double())
    got_torch = run(copy.deepcopy(ref).bfloat16(), x.bfloat16())
    got_fast = run(copy.deepcopy(fast).bfloat16(), x.bfloat16())
    assert got_fast[0].dtype == torch.bfloat16 and got_fast[-1].dtype == torch.bfloat16
    input_grad = 3 if kind == "lstm" else 2  # after output and the final state(s)
    for i in (0, input_grad):
        err_torch = (got_torch[i].double() - exact[i]).abs().max().item()
        err_fast = (got_fast[i].double() - exact[i]).abs().max().item()
        assert err_fast <= 2 * err_torch, (i, err_fast, err_torch)


NATIVE_BF16 = fastseq._C.recurrent_engine_runs_bfloat16(torch.zeros(4, 1, 1, dtype=torch.bfloat16), 2)


BF16_SHAPES = [(20, 8, 32, 64, {}), (9, 1, 3, 2, {}), (6, 5, 7, 18, {"bidirectional": True}),
               (12, 33, 16, 100, {"num_layers": 2}), (5, 3, 4, 6, {"batch_first": True})]


def _states(state):
    return list(state) if isinstance(state, tuple) else [state]


@pytest.mark.skipif(not NATIVE_BF16, reason="no bfloat16 brgemm (AMX / AVX512-BF16) on this CPU or build")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("T,B,I,H,cfg", BF16_SHAPES)
def test_bfloat16_inference_runs_natively_within_twice_torchs_error(kind, T, B, I, H, cfg):
    """Inference in bfloat16 on the engine's bfloat16 steps (oneDNN brgemm), every cell: output
    and final states at most twice the error of torch's own bfloat16 layer against float64, in
    bfloat16, for odd and even sizes, B = 1, bidirectional, stacked and batch_first."""
    ref, fast = make_pair(kind, I, H, **cfg)
    x = torch.randn(*((B, T) if cfg.get("batch_first") else (T, B)), I)
    assert fastseq._C.recurrent_engine_runs_bfloat16(x.bfloat16().transpose(0, 1) if cfg.get("batch_first")
                                                     else x.bfloat16(), H)
    with torch.no_grad():
        exact = ref.double()(x.double())
        got_torch = ref.bfloat16()(x.bfloat16())
        got_fast = fast.bfloat16()(x.bfloat16())
    for e, a, b in zip([exact[0], *_states(exact[1])], [got_torch[0], *_states(got_torch[1])],
                       [got_fast[0], *_states(got_fast[1])]):
        assert b.dtype == torch.bfloat16 and b.shape == a.shape
        err_torch = (a.double() - e).abs().max().item()
        err_fast = (b.double() - e).abs().max().item()
        assert err_fast <= 2 * err_torch + 1e-3, (err_fast, err_torch)


@pytest.mark.skipif(not NATIVE_BF16, reason="no bfloat16 brgemm (AMX / AVX512-BF16) on this CPU or build")
@pytest.mark.parametrize("kind", KINDS)
def test_bfloat16_inference_packed_sequences_and_nan(kind):
    """The bfloat16 steps carry the state of finished rows (packed sequences, both directions)
    and let a NaN in the input reach the outputs it feeds, as torch's bfloat16 layer does."""
    ref, fast = make_pair(kind, 6, 20, num_layers=2, bidirectional=True)
    x = torch.randn(11, 9, 6)
    lengths = torch.tensor([11, 1, 7, 3, 11, 9, 2, 5, 4])
    packed = pack_padded_sequence(x.bfloat16(), lengths, enforce_sorted=False)
    with torch.no_grad():
        exact, s_e = ref.double()(pack_padded_sequence(x.double(), lengths, enforce_sorted=False))
        got, s_f = fast.bfloat16()(packed)
    atol = 3e-2 if kind != "rnn_relu" else 6e-2
    torch.testing.assert_close(pad_packed_sequence(got)[0].double(), pad_packed_sequence(exact)[0], atol=atol, rtol=0)
    for f, e in zip(_states(s_f), _states(s_e)):
        torch.testing.assert_close(f.double(), e, atol=atol, rtol=0)
    x[3, 2, 1] = float("nan")
    with torch.no_grad():
        a = ref.bfloat16()(x.bfloat16())[0]
        b = fast(x.bfloat16())[0]
    assert torch.equal(a.isnan(), b.isnan())


def _bf16_training_results(module, x, lengths=None):
    """Outputs, final states and every gradient (input first) of one training call."""
    module.zero_grad()
    xx = x.clone().requires_grad_()
    inp = pack_padded_sequence(xx, lengths, enforce_sorted=False) if lengths is not None else xx
    out, state = module(inp)
    if lengths is not None:
        out = pad_packed_sequence(out)[0]
    states = _states(state)
    (out.float().square().sum() + sum(s.float().sum() for s in states)).backward()
    return [out, *states, xx.grad] + [p.grad for p in module.parameters()]


@pytest.mark.skipif(not NATIVE_BF16, reason="no bfloat16 brgemm (AMX / AVX512-BF16) on this CPU or build")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("T,B,I,H,cfg,packed", [(20, 8, 32, 64, {}, False), (9, 1, 3, 2, {}, False),
                                                (6, 5, 7, 18, {"bidirectional": True}, False),
                                                (12, 33, 16, 100, {"num_layers": 2}, False),
                                                (11, 9, 6, 20, {"num_layers": 2, "bidirectional": True}, True),
                                                (5, 3, 4, 6, {"batch_first": True}, False)])
def test_bfloat16_training_runs_natively_within_twice_torchs_error(kind, T, B, I, H, cfg, packed):
    """Training in bfloat16 on the engine, every cell (bfloat16 forward steps, float32 pointwise
    backward, bfloat16 GEMMs over all steps): outputs, final states and every gradient at most
    twice the error of torch's own bfloat16 layer against float64, all in bfloat16; packed
    sequences with many lengths, both directions, stacked, B = 1, batch_first."""
    ref, fast = make_pair(kind, I, H, **cfg)
    x = torch.randn(*((B, T) if cfg.get("batch_first") else (T, B)), I)
    lengths = torch.randint(1, T + 1, (x.shape[1],)) if packed else None
    if packed:
        lengths[0] = T
    exact = _bf16_training_results(copy.deepcopy(ref).double(), x.double(), lengths)
    got_torch = _bf16_training_results(copy.deepcopy(ref).bfloat16(), x.bfloat16(), lengths)
    got_fast = _bf16_training_results(copy.deepcopy(fast).bfloat16(), x.bfloat16(), lengths)
    # Plus one bfloat16 ulp (2^-7 relative) of the largest value: on tensors of a few elements
    # (H = 2: a 2-element bias gradient) the max error is rounding luck; measured over 10 seeds
    # at T=9 B=1 H=2, fastseq / torch error ratios have medians <= 1 but maxima up to 5 for
    # every cell, LSTM included; at T=20 B=8 H=64 the maxima are <= 1.6.
    for i, (e, a, b) in enumerate(zip(exact, got_torch, got_fast)):
        assert b.dtype == torch.bfloat16 and b.shape == a.shape, i
        err_torch = (a.double() - e).abs().max().item()
        err_fast = (b.double() - e).abs().max().item()
        assert err_fast <= 2 * err_torch + 2 ** -7 * max(1.0, e.abs().max().item()), (i, err_fast, err_torch)


@pytest.mark.skipif(not NATIVE_BF16, reason="no bfloat16 brgemm (AMX / AVX512-BF16) on this CPU or build")
def test_bfloat16_training_saves_float32_gates_and_backward_checks_them():
    """The native path is the one taken: the layer saves float32 gates and cells for a bfloat16
    input, its backward accepts them, and refuses cells that do not match."""
    T, B, I, H = 6, 3, 5, 8
    bf = dict(dtype=torch.bfloat16)
    x, h0, c0 = torch.randn(T, B, I, **bf), torch.zeros(B, H, **bf), torch.zeros(B, H, **bf)
    w_ih, w_hh = torch.randn(4 * H, I, **bf), torch.randn(4 * H, H, **bf)
    out, h_n, c_n, gates, cells = fastseq._C.lstm_layer_forward(x, h0, c0, w_ih, w_hh, None, None, None, None, False)
    assert gates.dtype == torch.float32 and cells.dtype == torch.float32 and out.dtype == torch.bfloat16
    grads = fastseq._C.lstm_layer_backward(torch.ones_like(out), None, None, x, h0, c0, w_ih, w_hh, None, None,
                                           False, False, out, gates, cells, True)
    assert all(g.dtype == torch.bfloat16 for g in grads[:5])
    with pytest.raises(RuntimeError, match="cells must be float32 like gates"):
        fastseq._C.lstm_layer_backward(torch.ones_like(out), None, None, x, h0, c0, w_ih, w_hh, None, None,
                                       False, False, out, gates, cells.bfloat16(), True)


@pytest.mark.parametrize("cls", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cells_with_parametrized_weights_match_torch(cls):
    """A cell whose weight lives outside _parameters (torch.nn.utils.parametrize) reads it
    as an attribute, as torch's cell does."""
    from torch.nn.utils import parametrize

    class Scale(torch.nn.Module):
        def forward(self, w):
            return 0.5 * w

    ref, fast = getattr(torch.nn, cls)(6, 10), getattr(fnn, cls)(6, 10)
    fast.load_state_dict(ref.state_dict())
    for m in (ref, fast):
        parametrize.register_parametrization(m, "weight_hh", Scale())
    x, h = torch.randn(4, 6), torch.randn(4, 10)
    state = (h, h.clone()) if cls == "LSTMCell" else h
    a, b = fast(x, state), ref(x, state)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
