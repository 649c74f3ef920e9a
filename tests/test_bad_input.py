"""Every input check: bad input raises a clear error naming the argument, the expected
and the actual value; nothing crashes the interpreter or returns a silent wrong answer."""
import pytest
import torch

import fastseq
import fastseq.nn as fnn


# ---- lstm ----

def _lstm(**kw):
    return fnn.LSTM(**{**dict(input_size=4, hidden_size=5), **kw})


@pytest.mark.parametrize("shape", [(4,), (2, 3, 4, 4)])
def test_lstm_wrong_rank(shape):
    with pytest.raises(ValueError, match=r"Expected input to be 2D or 3D, got \dD"):
        _lstm()(torch.randn(*shape))


def test_lstm_wrong_input_size():
    with pytest.raises(RuntimeError, match="input_size. Expected 4, got 3"):
        _lstm()(torch.randn(5, 2, 3))


def test_lstm_zero_length_sequence():
    with pytest.raises(RuntimeError, match="sequence length to be larger than 0"):
        _lstm()(torch.randn(0, 2, 4))


@pytest.mark.parametrize("h_shape,c_shape,which", [((1, 3, 5), (1, 2, 5), r"hidden\[0\] \(hx\) size \(1, 2, 5\), got \[1, 3, 5\]"),
                                                   ((1, 2, 5), (2, 2, 5), r"hidden\[1\] \(cx\) size \(1, 2, 5\), got \[2, 2, 5\]"),
                                                   ((1, 2, 4), (1, 2, 5), r"hidden\[0\] \(hx\) size \(1, 2, 5\)")])
def test_lstm_mismatched_state_shapes(h_shape, c_shape, which):
    with pytest.raises(RuntimeError, match=which):
        _lstm()(torch.randn(3, 2, 4), (torch.randn(*h_shape), torch.randn(*c_shape)))


def test_lstm_projected_state_shape():
    with pytest.raises(RuntimeError, match=r"hidden\[0\] \(hx\) size \(1, 2, 3\), got \[1, 2, 5\]"):
        _lstm(proj_size=3)(torch.randn(3, 2, 4), (torch.randn(1, 2, 5), torch.randn(1, 2, 5)))


def test_lstm_state_rank_mismatch():
    with pytest.raises(RuntimeError, match="batched 3-D input, hx and cx should also be 3-D"):
        _lstm()(torch.randn(3, 2, 4), (torch.randn(2, 5), torch.randn(2, 5)))
    with pytest.raises(RuntimeError, match="unbatched 2-D input, hx and cx should also be 2-D"):
        _lstm()(torch.randn(3, 4), (torch.randn(1, 1, 5), torch.randn(1, 1, 5)))


def test_lstm_hx_not_a_pair():
    with pytest.raises(TypeError, match=r"hx must be a tuple \(h_0, c_0\)"):
        _lstm()(torch.randn(3, 2, 4), torch.randn(1, 2, 5))


def test_lstm_dtype_disagreement():
    with pytest.raises(ValueError, match=r"input dtype \(torch.float64\) does not match weight dtype \(torch.float32\)"):
        _lstm()(torch.randn(3, 2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"hx dtype \(torch.float64\) must match the input dtype \(torch.float32\)"):
        _lstm()(torch.randn(3, 2, 4), (torch.randn(1, 2, 5, dtype=torch.float64), torch.randn(1, 2, 5)))


def test_lstm_non_float_input():
    with pytest.raises(ValueError, match="input must be a floating-point tensor, got dtype torch.int64"):
        _lstm()(torch.randint(0, 3, (3, 2, 4)))
    with pytest.raises(ValueError, match="floating-point"):
        fnn.LSTMCell(4, 5)(torch.randint(0, 3, (2, 4)))


def test_lstm_device_disagreement():
    meta = torch.randn(3, 2, 4, device="meta")
    with pytest.raises(RuntimeError, match="input is on meta but the weights are on cpu"):
        _lstm()(meta)


@pytest.mark.skipif(fastseq._C.built_with_cuda(), reason="this build has CUDA")
def test_lstm_cuda_tensor_on_cpu_only_build():
    # A fake CUDA tensor stands in for a real one: a CPU-only torch cannot allocate on CUDA.
    from torch._subclasses.fake_tensor import FakeTensorMode
    lstm, cell = _lstm(), fnn.LSTMCell(4, 5)
    with FakeTensorMode(allow_non_fake_inputs=True):
        with pytest.raises(RuntimeError, match="fastseq was built without CUDA; rebuild with CUDA"):
            lstm(torch.empty(3, 2, 4, device="cuda"))
        with pytest.raises(RuntimeError, match="fastseq was built without CUDA; rebuild with CUDA"):
            cell(torch.empty(2, 4, device="cuda"))


def test_lstm_op_shape_checks_name_argument():
    x, h0, c0 = torch.randn(3, 2, 4), torch.randn(2, 5), torch.randn(2, 5)
    w_ih, w_hh = torch.randn(20, 4), torch.randn(20, 5)
    with pytest.raises(RuntimeError, match=r"lstm_layer_forward: w_hh must have shape \[20, 5\], got \[20, 4\]"):
        fastseq._C.lstm_layer_forward(x, h0, c0, w_ih, torch.randn(20, 4), None, None, None, None, False)
    with pytest.raises(RuntimeError, match=r"lstm_layer_forward: input must be 3-D, got 2-D"):
        fastseq._C.lstm_layer_forward(x[0], h0, c0, w_ih, w_hh, None, None, None, None, False)
    with pytest.raises(RuntimeError, match=r"b_ih must have shape \[20\], got \[5\]"):
        fastseq._C.lstm_layer_forward(x, h0, c0, w_ih, w_hh, torch.randn(5), None, None, None, False)
    with pytest.raises(RuntimeError, match="w_hh must have the dtype of input"):
        fastseq._C.lstm_layer_forward(x, h0, c0, w_ih, w_hh.double(), None, None, None, None, False)
    with pytest.raises(RuntimeError, match="batch_sizes must be non-increasing"):
        fastseq._C.lstm_layer_forward(x, h0, c0, w_ih, w_hh, None, None, None, torch.tensor([1, 2, 2]), False)
    with pytest.raises(RuntimeError, match=r"batch_sizes\[0\] must be in \[0, 2\]"):
        fastseq._C.lstm_layer_forward(x, h0, c0, w_ih, w_hh, None, None, None, torch.tensor([3, 2, 2]), False)
    with pytest.raises(RuntimeError, match="float32, float64 or bfloat16 on CPU, got Half"):
        fastseq._C.lstm_layer_forward(x.half(), h0.half(), c0.half(), w_ih.half(), w_hh.half(),
                                      None, None, None, None, False)


def test_lstm_cell_bad_input():
    cell = fnn.LSTMCell(4, 5)
    with pytest.raises(ValueError, match="Expected input to be 1D or 2D, got 3D"):
        cell(torch.randn(1, 2, 4))
    with pytest.raises(RuntimeError, match="input_size. Expected 4, got 3"):
        cell(torch.randn(2, 3))
    with pytest.raises(RuntimeError, match=r"hx\[1\] must have shape \[2, 5\] \(batch, hidden_size\), got \[3, 5\]"):
        cell(torch.randn(2, 4), (torch.randn(2, 5), torch.randn(3, 5)))
    with pytest.raises(ValueError, match=r"input dtype \(torch.float64\) does not match weight dtype"):
        cell(torch.randn(2, 4, dtype=torch.float64))



# ---- gru / rnn ----


def _gru_op_args(**over):
    T, B, I, H = 3, 2, 4, 5
    args = dict(input=torch.randn(T, B, I), hx=torch.randn(B, H), w_ih=torch.randn(3 * H, I),
                w_hh=torch.randn(3 * H, H), b_ih=torch.randn(3 * H), b_hh=torch.randn(3 * H),
                batch_sizes=None, reverse=False, need_workspace=False)
    args.update(over)
    return args


@pytest.mark.parametrize("module_cls", [fnn.GRU, fnn.RNN])
@pytest.mark.parametrize("bad_input,err,match", [
    (lambda: torch.randn(2, 3, 4, 4), ValueError, "2D or 3D"),
    (lambda: torch.randn(5, 2, 3), RuntimeError, "input_size. Expected 4, got 3"),
    (lambda: torch.randint(0, 3, (5, 2, 4)), ValueError, "floating-point"),
    (lambda: torch.randn(5, 2, 4, dtype=torch.float64), ValueError, "does not match weight dtype"),
    (lambda: torch.randn(5, 2, 4, device="meta"), RuntimeError, "meta"),
    (lambda: torch.randn(0, 2, 4), RuntimeError, "sequence length"),
], ids=["rank", "input_size", "integer", "dtype", "device", "zero_length"])
def test_gru_rnn_module_bad_input(module_cls, bad_input, err, match):
    with pytest.raises(err, match=match):
        module_cls(4, 6)(bad_input())


@pytest.mark.parametrize("module_cls", [fnn.GRU, fnn.RNN])
@pytest.mark.parametrize("bad_hx,err,match", [
    (lambda: torch.randn(1, 3, 6), RuntimeError, r"Expected hidden.*\(1, 2, 6\), got \[1, 3, 6\]"),
    (lambda: torch.randn(2, 6), RuntimeError, "3-D"),
    (lambda: torch.randn(1, 2, 6, dtype=torch.float64), ValueError, "hx dtype"),
    (lambda: torch.randn(1, 2, 6, device="meta"), RuntimeError, "hx is on meta"),
    (lambda: (torch.randn(1, 2, 6), torch.randn(1, 2, 6)), TypeError, "length 2"),
], ids=["shape", "rank", "dtype", "device", "tuple"])
def test_gru_rnn_module_bad_hx(module_cls, bad_hx, err, match):
    with pytest.raises(err, match=match):
        module_cls(4, 6)(torch.randn(5, 2, 4), bad_hx())


def test_rnn_bad_nonlinearity():
    with pytest.raises(ValueError, match="nonlinearity"):
        fnn.RNN(4, 6, nonlinearity="sigmoid")
    rnn = fnn.RNN(4, 6)
    rnn.nonlinearity = "sigmoid"
    with pytest.raises(ValueError, match="'tanh' or 'relu', got 'sigmoid'"):
        rnn(torch.randn(5, 2, 4))
    cell = fnn.RNNCell(4, 6, nonlinearity="sigmoid")
    with pytest.raises(RuntimeError, match="'tanh' or 'relu', got 'sigmoid'"):
        cell(torch.randn(2, 4))
    with pytest.raises(RuntimeError, match="nonlinearity must be 'tanh' or 'relu', got 'gelu'"):
        fastseq._C.rnn_forward(torch.randn(3, 2, 4), torch.randn(2, 6), torch.randn(6, 4), torch.randn(6, 6),
                               None, None, None, False, "gelu")


@pytest.mark.parametrize("cell_cls", [fnn.GRUCell, fnn.RNNCell])
@pytest.mark.parametrize("bad,err,match", [
    (lambda: (torch.randn(2, 3, 4), None), ValueError, "1D or 2D"),
    (lambda: (torch.randn(2, 3), None), RuntimeError, "input_size. Expected 4, got 3"),
    (lambda: (torch.randint(0, 2, (2, 4)), None), ValueError, "floating-point"),
    (lambda: (torch.randn(2, 4, dtype=torch.float64), None), ValueError, "does not match weight dtype"),
    (lambda: (torch.randn(2, 4), torch.randn(3, 6)), RuntimeError, r"hx must have shape \[2, 6\].*got \[3, 6\]"),
    (lambda: (torch.randn(2, 4), torch.randn(6)), RuntimeError, "Expected hidden to be 2D"),
    (lambda: (torch.randn(2, 4), torch.randn(2, 6, dtype=torch.float64)), ValueError, "hx dtype"),
    (lambda: (torch.randn(2, 4), torch.randn(2, 6, device="meta")), RuntimeError, "hx is on meta"),
], ids=["rank", "input_size", "integer", "dtype", "hx_shape", "hx_rank", "hx_dtype", "hx_device"])
def test_gru_rnn_cell_bad_input(cell_cls, bad, err, match):
    x, hx = bad()
    with pytest.raises(err, match=match):
        cell_cls(4, 6)(x, hx)


@pytest.mark.parametrize("over,match", [
    (dict(input=torch.randn(3, 4)), "input must be 3-D, got 2-D"),
    (dict(input=torch.randint(0, 3, (3, 2, 4))), "input must be a floating-point tensor"),
    (dict(input=torch.randn(3, 2, 4).half(), hx=torch.randn(2, 5).half(), w_ih=torch.randn(15, 4).half(),
          w_hh=torch.randn(15, 5).half(), b_ih=None, b_hh=None), "cpu must be float32, float64 or bfloat16"),
    (dict(hx=torch.randn(3, 5)), r"hx must have shape \[2, \*\], got \[3, 5\]"),
    (dict(w_ih=torch.randn(15, 3)), r"w_ih must have shape \[15, 4\], got \[15, 3\]"),
    (dict(w_hh=torch.randn(12, 5)), r"w_hh must have shape \[15, 5\], got \[12, 5\]"),
    (dict(b_hh=torch.randn(14)), r"b_hh must have shape \[15\], got \[14\]"),
    (dict(w_hh=torch.randn(15, 5, dtype=torch.float64)), "w_hh must have the dtype of input"),
    (dict(b_ih=torch.randn(15, device="meta")), "b_ih must be on the device of input"),
    (dict(batch_sizes=torch.tensor([2, 1, 2])), "batch_sizes must be non-increasing"),
    (dict(batch_sizes=torch.tensor([3, 2, 1])), r"batch_sizes\[0\] must be in \[0, 2\], got 3"),
    (dict(batch_sizes=torch.tensor([2, 1])), r"batch_sizes must have shape \[3\], got \[2\]"),
    (dict(batch_sizes=torch.tensor([2., 1., 1.])), "batch_sizes must be an int64 cpu tensor"),
], ids=["rank", "integer", "half_cpu", "hx", "w_ih", "w_hh", "b_hh", "dtype", "device", "bs_order",
        "bs_range", "bs_len", "bs_dtype"])
def test_gru_op_bad_input(over, match):
    with pytest.raises(RuntimeError, match=match):
        fastseq._C.gru_forward(**_gru_op_args(**over))


def test_gru_rnn_op_bad_backward_input():
    from fastseq.ops import gru as gru_ops

    a = _gru_op_args(need_workspace=True)
    out, hn, ws = fastseq._C.gru_forward(**a)
    base = dict(grad_output=torch.randn_like(out), grad_hy=torch.randn_like(hn), input=a["input"], hx=a["hx"],
                w_ih=a["w_ih"], w_hh=a["w_hh"], output=out, workspace=ws, batch_sizes=None, reverse=False,
                need_input_grad=True, need_hx_grad=True)
    with pytest.raises(RuntimeError, match=r"grad_output must have shape \[3, 2, 5\], got \[3, 2, 4\]"):
        fastseq._C.gru_backward(**{**base, "grad_output": torch.randn(3, 2, 4)})
    with pytest.raises(RuntimeError, match=r"workspace must have shape \[3, 2, 20\], got \[0\]"):
        fastseq._C.gru_backward(**{**base, "workspace": torch.empty(0)})
    # A forward run without grad keeps no workspace; backward through it is refused clearly.
    x = a["input"].clone().requires_grad_()
    with torch.no_grad():
        out, _, ws = torch.ops.fastseq.gru_forward(x, a["hx"], a["w_ih"], a["w_hh"], None, None, None, False, False)
    assert ws.numel() == 0
    out, _ = gru_ops.gru(x, a["hx"], a["w_ih"], a["w_hh"])
    out.sum().backward()
    assert x.grad is not None


# ---- attention (functional) ----


# ---- multihead attention / transformer ----


# ---- models / rl ----
