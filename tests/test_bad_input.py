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


# ---- attention (functional) ----


# ---- multihead attention / transformer ----


# ---- models / rl ----
