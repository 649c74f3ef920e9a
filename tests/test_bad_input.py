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

def _qkv(B=2, H=3, L=5, S=7, E=8, Ev=8):
    return torch.randn(B, H, L, E), torch.randn(B, H, S, E), torch.randn(B, H, S, Ev)


@pytest.mark.parametrize("q,k,v,kwargs,match", [
    (torch.randn(2, 3, 5, 8), torch.randn(4, 3, 7, 8), torch.randn(4, 3, 7, 8), {},
     r"batch dims .* query \[2, 3, 5, 8\], key \[4, 3, 7, 8\]"),
    (*_qkv()[:1], torch.randn(2, 2, 7, 8), torch.randn(2, 2, 7, 8), {},
     r"query heads \(dim -3\) 3 must equal key/value heads 2"),
    (*_qkv()[:1], torch.randn(2, 2, 7, 8), torch.randn(2, 2, 7, 8), {"enable_gqa": True},
     r"multiple of key's; got query heads 3, key heads 2"),
    (*_qkv()[:2], torch.randn(2, 1, 7, 8), {}, r"key and value must have the same number of heads"),
    (_qkv()[0], torch.randn(2, 3, 7, 6), _qkv()[2], {}, r"key's last dim must equal query's \(8\), got key shape \[2, 3, 7, 6\]"),
    (*_qkv()[:2], torch.randn(2, 3, 6, 8), {}, r"value must have key's sequence length 7 .* \[2, 3, 6, 8\]"),
    (torch.randn(8), *_qkv()[1:], {}, r"query must have at least 2 dims .* got shape \[8\]"),
    (*_qkv(), {"attn_mask": torch.ones(5, 6, dtype=torch.bool)},
     r"attn_mask must broadcast to .* \[2, 3, 5, 7\], got shape \[5, 6\]"),
    (*_qkv(), {"attn_mask": torch.ones(3, 3, 5, 7, dtype=torch.bool)},
     r"attn_mask must broadcast to .* \[2, 3, 5, 7\], got shape \[3, 3, 5, 7\]"),
    (*_qkv(), {"attn_mask": torch.ones(5, 7, dtype=torch.int64)},
     r"attn_mask must be bool, float32 or query's dtype \(torch.float32\), got torch.int64"),
    (*_qkv(), {"attn_mask": torch.ones(5, 7, dtype=torch.float64)},
     r"attn_mask must be bool, float32 or query's dtype \(torch.float32\), got torch.float64"),
    (_qkv()[0], _qkv()[1].double(), _qkv()[2], {}, r"key must have query's dtype \(torch.float32\), got torch.float64"),
    (*_qkv()[:2], _qkv()[2].half(), {}, r"value must have query's dtype \(torch.float32\), got torch.float16"),
    (_qkv()[0], _qkv()[1].to("meta"), _qkv()[2], {}, r"key must be on query's device \(cpu\), got meta"),
    (*_qkv(), {"attn_mask": torch.ones(5, 7, dtype=torch.bool, device="meta")},
     r"attn_mask must be on query's device \(cpu\), got meta"),
    (*_qkv(), {"dropout_p": 1.5}, r"dropout_p must be in \[0, 1\], got 1.5"),
    (*_qkv(), {"dropout_p": -0.1}, r"dropout_p must be in \[0, 1\], got -0.1"),
])
def test_attention_bad_arguments(q, k, v, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fnn.functional.scaled_dot_product_attention(q, k, v, **kwargs)
    with pytest.raises(RuntimeError, match=match):  # what torch raises, so torch code catches it
        fnn.functional.scaled_dot_product_attention_with_weights(q, k, v, **kwargs)


def test_attention_bad_types():
    q, k, v = _qkv()
    with pytest.raises(TypeError, match="value must be a Tensor, got NoneType"):
        fnn.functional.scaled_dot_product_attention(q, k, None)
    with pytest.raises(TypeError, match="attn_mask must be a Tensor or None, got list"):
        fnn.functional.scaled_dot_product_attention(q, k, v, attn_mask=[[True]])
    with pytest.raises(RuntimeError, match="query must be a floating-point tensor, got Long"):
        fnn.functional.scaled_dot_product_attention(q.long(), k.long(), v.long())


def test_attention_causal_with_mask_is_accepted_and_applies_both():
    # torch's math kernel rejects is_causal with attn_mask, its default CPU kernel applies both;
    # fastseq follows the default kernel (tests/test_attention.py checks the values).
    q, k, v = _qkv(L=7)
    out = fnn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=torch.ones(7, 7, dtype=torch.bool), is_causal=True)
    torch.testing.assert_close(out, fnn.functional.scaled_dot_product_attention(q, k, v, is_causal=True))


@pytest.mark.parametrize("args,match", [
    (lambda q, k, v: (q[0], k, v), r"query must be 4-D, got 3-D with shape \[3, 5, 8\]"),
    (lambda q, k, v: (q, k[:1], v), r"key must have shape \[2, \*, \*, 8\], got \[1, 3, 7, 8\]"),
    (lambda q, k, v: (q, k, v[:, :, :6]), r"value must have shape \[2, 3, 7, \*\], got \[2, 3, 6, 8\]"),
    (lambda q, k, v: (q, k[:, :2], v[:, :2]), r"query's head count \(3\) must be a multiple of key's \(2\)"),
    (lambda q, k, v: (q, k.double(), v), r"key must have the dtype of query \(Float\), got Double"),
])
def test_attention_op_checks_in_cpp(args, match):
    from fastseq.ops import attention as ops
    q, k, v = args(*_qkv())
    with pytest.raises(RuntimeError, match=match):
        ops.attention_forward(q, k, v, None, 0.0, False, 1.0)


def test_attention_op_mask_checks_in_cpp():
    from fastseq.ops import attention as ops
    q, k, v = _qkv()
    with pytest.raises(RuntimeError, match=r"attn_mask must have shape \[2, 3, 5, 7\], got \[5, 7\]"):
        ops.attention_forward(q, k, v, torch.ones(5, 7, dtype=torch.bool), 0.0, False, 1.0)
    with pytest.raises(RuntimeError, match=r"attn_mask must be bool or have query's dtype \(Float\), got Double"):
        ops.attention_forward(q, k, v, torch.ones(2, 3, 5, 7, dtype=torch.float64), 0.0, False, 1.0)
    with pytest.raises(RuntimeError, match=r"scale must be finite, got inf"):
        ops.attention_forward(q, k, v, None, 0.0, False, float("inf"))



# ---- multihead attention / transformer ----

def _mha(**kw):
    return fnn.MultiheadAttention(8, 2, **kw)


MHA_BAD = [
    # (description, call on (mha, x=(L=3, N=2, E=8)), exception type, message regex)
    ("wrong embed dim", lambda m, x: m(x[..., :6], x[..., :6], x[..., :6]), AssertionError,
     r"embedding dimension of 8, but got 6"),
    ("key kdim", lambda m, x: m(x, x[..., :5], x), AssertionError, r"key: expected .*kdim\) 8, got 5"),
    ("4-D query", lambda m, x: m(x[None], x[None], x[None]), AssertionError, r"4-D query"),
    ("2-D key for 3-D query", lambda m, x: m(x, x[0], x[0]), AssertionError, r"`key` and `value` to be 3-D"),
    ("batch mismatch", lambda m, x: m(x, x[:, :1], x[:, :1]), AssertionError,
     r"query's batch size 2, got key batch 1"),
    ("key/value length mismatch", lambda m, x: m(x, x, x[:2]), AssertionError,
     r"same sequence length, got key 3 and value 2"),
    ("int attn_mask", lambda m, x: m(x, x, x, attn_mask=torch.zeros(3, 3, dtype=torch.long)),
     AssertionError, r"only bool and floating types of attn_mask.*torch.int64"),
    ("int key_padding_mask", lambda m, x: m(x, x, x, key_padding_mask=torch.zeros(2, 3, dtype=torch.int32)),
     AssertionError, r"only bool and floating types of key_padding_mask"),
    ("2-D attn_mask shape", lambda m, x: m(x, x, x, attn_mask=torch.zeros(3, 4, dtype=torch.bool)),
     RuntimeError, r"2D attn_mask is \(3, 4\), but should be \(3, 3\)"),
    ("3-D attn_mask shape", lambda m, x: m(x, x, x, attn_mask=torch.zeros(2, 3, 3, dtype=torch.bool)),
     RuntimeError, r"3D attn_mask is \(2, 3, 3\), but should be \(4, 3, 3\)"),
    ("1-D attn_mask", lambda m, x: m(x, x, x, attn_mask=torch.zeros(3, dtype=torch.bool)),
     AssertionError, r"`attn_mask` to be `None`, 2-D or 3-D but found 1-D"),
    ("key_padding_mask shape", lambda m, x: m(x, x, x, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool)),
     AssertionError, r"key_padding_mask of shape \(2, 3\).*got \(2, 4\)"),
    ("key_padding_mask rank", lambda m, x: m(x, x, x, key_padding_mask=torch.zeros(3, dtype=torch.bool)),
     AssertionError, r"`key_padding_mask` to be `None` or 2-D"),
    ("float mask dtype", lambda m, x: m(x, x, x, attn_mask=torch.zeros(3, 3, dtype=torch.float64)),
     RuntimeError, r"float attn_mask must have the dtype of query \(torch.float32\), got torch.float64"),
    ("is_causal without mask", lambda m, x: m(x, x, x, is_causal=True), RuntimeError,
     r"Need attn_mask if specifying the is_causal hint"),
    ("unbatched 3-D mask", lambda m, x: m(x[:, 0], x[:, 0], x[:, 0], attn_mask=torch.zeros(4, 3, 3)),
     AssertionError, r"Expected `attn_mask` shape to be \(2, 3, 3\)"),
]


@pytest.mark.parametrize("what,call,exc,msg", MHA_BAD, ids=[c[0] for c in MHA_BAD])
def test_multihead_attention_bad_input(what, call, exc, msg):
    with pytest.raises(exc, match=msg):
        call(_mha(), torch.randn(3, 2, 8))


def test_multihead_attention_bad_construction():
    with pytest.raises(AssertionError, match="embed_dim must be divisible by num_heads"):
        fnn.MultiheadAttention(10, 3)


def test_transformer_bad_input():
    with pytest.raises(RuntimeError, match="activation should be relu/gelu, not tanhh"):
        fnn.TransformerEncoderLayer(8, 2, activation="tanhh")
    layer = fnn.TransformerEncoderLayer(8, 2, 16)
    x = torch.randn(3, 2, 8)
    with pytest.raises(AssertionError, match="only bool and floating types of src_key_padding_mask"):
        layer(x, src_key_padding_mask=torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(AssertionError, match=r"key_padding_mask of shape \(2, 3\)"):
        layer(x, src_key_padding_mask=torch.zeros(3, 2, dtype=torch.bool))
    with pytest.raises(RuntimeError, match=r"2D attn_mask is \(2, 2\)"):
        fnn.TransformerEncoder(layer, 1)(x, mask=torch.zeros(2, 2, dtype=torch.bool))
    model = fnn.Transformer(8, 2, 1, 1, 16)
    with pytest.raises(RuntimeError, match="the batch number of src and tgt must be equal"):
        model(torch.randn(3, 2, 8), torch.randn(4, 3, 8))
    with pytest.raises(RuntimeError, match="the feature number of src and tgt must be equal to d_model"):
        model(torch.randn(3, 2, 8), torch.randn(4, 2, 6))
    with pytest.raises(AssertionError, match="does not take NestedTensor"):
        nt = torch.nested.nested_tensor([torch.randn(2, 8), torch.randn(3, 8)], layout=torch.jagged)
        fnn.MultiheadAttention(8, 2, batch_first=True)(nt, nt, nt)



# ---- models / rl ----

# rl (more in tests/test_rl.py: CLI errors, checkpoints, replay buffer)
def test_rl_dqn_rejects_continuous_actions():
    pytest.importorskip("gymnasium")
    from fastseq.rl import DQNConfig, train_dqn
    with pytest.raises(ValueError, match=r"dqn needs a Discrete action space, but Pendulum-v1 has Box"):
        train_dqn("Pendulum-v1", DQNConfig(total_steps=10), progress=False, out_dir="/nonexistent-unused")


def test_rl_checkpoint_rejects_foreign_file(tmp_path):
    pytest.importorskip("gymnasium")
    from fastseq.rl import load_checkpoint
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="not a fastseq RL checkpoint"):
        load_checkpoint(str(path))

# models (fastseq train/sample/cells/attention): user errors are one line, exit code 2.

def _model_cli_error(argv, capsys):
    from fastseq.cli import main
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_models_missing_data_file(tmp_path, capsys):
    err = _model_cli_error(["train", "charlm", "--data", str(tmp_path / "nope.txt"),
                            "--out", str(tmp_path / "run"), "--no-progress"], capsys)
    assert "--data: no such file or folder" in err and "nope.txt" in err


def test_models_empty_corpus(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    err = _model_cli_error(["train", "gpt", "--data", str(tmp_path / "empty.txt"),
                            "--out", str(tmp_path / "run"), "--no-progress"], capsys)
    assert "is empty (expected some text, got 0 characters)" in err


def test_models_checkpoint_of_another_model(tmp_path, capsys):
    from fastseq.models import Seq2Seq, checkpoint
    from fastseq.models.vocab import TokenVocab

    path = str(tmp_path / "s2s.pt")
    checkpoint.save(path, Seq2Seq(5, 5, embed=4, hidden=4, attn_dim=4),
                    (TokenVocab(["a", "b"]), TokenVocab(["1", "2"])), step=0, history={"train": [], "val": []})
    err = _model_cli_error(["cells", "--checkpoint", path, "--data", "hello"], capsys)
    assert "holds a seq2seq model, expected charlm" in err
    (tmp_path / "junk.pt").write_bytes(b"junk")
    err = _model_cli_error(["sample", "--checkpoint", str(tmp_path / "junk.pt")], capsys)
    assert "is not a fastseq model checkpoint" in err


# ---- attention settings (fastseq._C.set_attention_settings, fastseq.ops.attention_settings) ----

@pytest.mark.parametrize("changes,exc,match", [
    (dict(gemm="fast"), ValueError, r"gemm must be 'auto', 'tile' or 'blas', got 'fast'"),
    (dict(gemm=1), TypeError, r"gemm must be a str .*got the integer 1"),
    (dict(blok_q=8), ValueError, r"unknown setting 'blok_q'; expected one of gemm, block_q"),
    (dict(block_q=0), ValueError, r"block_q must be an int in \[1, 4096\], got 0"),
    (dict(block_k_bwd=5000), ValueError, r"block_k_bwd must be an int in \[1, 4096\], got 5000"),
    (dict(br_block_q=-1), ValueError, r"br_block_q must be an int in \[0, 4096\] \(0: chosen by L\), got -1"),
    (dict(br_block_k_bwd=-2), ValueError,
     r"br_block_k_bwd must be an int in \[0, 4096\] \(0: chosen by is_causal\), got -2"),
    (dict(block_q="8"), TypeError, r"block_q must be an int, got the str '8'"),
    (dict(block_q=8.0), TypeError, r"block_q must be an int or a str, got float"),
    (dict(block_q=True), TypeError, r"block_q must be an int or a str, got bool"),
])
def test_attention_settings_bad_input(changes, exc, match):
    before = fastseq._C.attention_settings()
    with pytest.raises(exc, match=match):
        fastseq._C.set_attention_settings(**changes)
    # A rejected update changes nothing, also when a valid setting came with it.
    with pytest.raises(exc, match=match):
        with fastseq.ops.attention_settings(block_k=32, **changes):
            pass
    assert fastseq._C.attention_settings() == before
