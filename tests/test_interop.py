"""fastseq.nn under torch's tools that do not run a module's forward as plain eager code:
ONNX export (both exporters, run in onnxruntime), torch.ao dynamic quantization, torch.func
(grad, jacrev, vmap), TorchScript (script, freeze, trace) and whole-model weights_only
loading. Every check compares with what torch does for the same call on the torch.nn model
holding the same weights."""
import importlib
import io
import pickle
import warnings

import pytest

# torch's own noise on these paths: jit deprecation, tracer warnings in torch's forwards,
# functorch's slow-fallback notices for aten ops without batching rules.
pytestmark = [pytest.mark.filterwarnings("ignore:.*torch.jit.*is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
              pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")]
import torch
from torch.func import functional_call, grad, jacrev, vmap

import fastseq.nn as fnn
import fastseq.nn.functional as FF
from fastseq.nn._interop import use_torch_forward

IN, H, E, T, B = 3, 4, 4, 5, 2
LAYERS = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "MHA", "Encoder", "Decoder"]
DTYPES = [torch.float32, torch.float64]


def make_layer(nn, name):
    return {
        "LSTM": lambda: nn.LSTM(IN, H, num_layers=2, bidirectional=True),
        "GRU": lambda: nn.GRU(IN, H, num_layers=2),
        "RNN": lambda: nn.RNN(IN, H, nonlinearity="relu"),
        "LSTMCell": lambda: nn.LSTMCell(IN, H),
        "GRUCell": lambda: nn.GRUCell(IN, H),
        "RNNCell": lambda: nn.RNNCell(IN, H),
        "MHA": lambda: nn.MultiheadAttention(E, 2),
        "Encoder": lambda: nn.TransformerEncoderLayer(E, 2, 8, dropout=0.0),
        "Decoder": lambda: nn.TransformerDecoderLayer(E, 2, 8, dropout=0.0),
    }[name]()


def twins(name, dtype=torch.float32):
    """(fastseq layer, torch layer with the same weights)."""
    fast = make_layer(fnn, name).to(dtype)
    ref = make_layer(torch.nn, name).to(dtype)
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def sample(name, dtype=torch.float32):
    if name.endswith("Cell"):
        return torch.randn(B, IN, dtype=dtype)
    return torch.randn(T, B, E if name in ("MHA", "Encoder", "Decoder") else IN, dtype=dtype)


def flat(out):
    """Every tensor a layer returns (outputs, final states, attention weights), as one vector."""
    if isinstance(out, torch.Tensor):
        return out.reshape(-1)
    return torch.cat([flat(o) for o in out if o is not None])


def call(name, layer, x):
    if name == "MHA":
        return flat(layer(x, x, x))
    if name == "Decoder":
        return flat(layer(x, x))
    return flat(layer(x))


# ---- the switch itself ------------------------------------------------------------------


def test_fused_path_in_eager_torch_path_under_tracing_and_transforms():
    seen = []

    def probe(x):
        seen.append(use_torch_forward())
        return x * 2

    x = torch.randn(3)
    probe(x)
    torch.jit.trace(probe, (x,), check_trace=False)  # the check reruns it untraced
    vmap(probe)(x.unsqueeze(0))
    grad(lambda x: probe(x).sum())(x)
    assert seen[0] is False and all(seen[1:]), seen


# ---- ONNX ---------------------------------------------------------------------------------

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


class Mixed(torch.nn.Module):
    """Every fused layer in one model, as an exported model would use them."""

    def __init__(self, nn):
        super().__init__()
        self.lstm = nn.LSTM(IN, H, num_layers=2, bidirectional=True, batch_first=True)
        self.gru = nn.GRU(2 * H, H, batch_first=True)
        self.rnn = nn.RNN(H, H, batch_first=True)
        self.mha = nn.MultiheadAttention(H, 2, batch_first=True)
        self.enc = nn.TransformerEncoderLayer(H, 2, 8, dropout=0.0, batch_first=True)
        self.dec = nn.TransformerDecoderLayer(H, 2, 8, dropout=0.0, batch_first=True)
        self.lstm_cell, self.gru_cell, self.rnn_cell = nn.LSTMCell(H, H), nn.GRUCell(H, H), nn.RNNCell(H, H)

    def forward(self, x):
        y, _ = self.lstm(x)
        y, _ = self.gru(y)
        y, _ = self.rnn(y)
        a, weights = self.mha(y, y, y)
        d = self.dec(self.enc(a), y)
        h, _ = self.lstm_cell(d[:, 0])
        g = self.gru_cell(d[:, 1], h)
        r = self.rnn_cell(d[:, 2], g)
        return d, weights, torch.stack([h, g, r], 1)


class Attention(torch.nn.Module):
    """fastseq.nn.functional's attention with a bool mask, a float mask and is_causal."""

    def forward(self, q, k, v, keep, bias):
        a = FF.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        b = FF.scaled_dot_product_attention(q, k, v, is_causal=True)
        c, w = FF.scaled_dot_product_attention_with_weights(q, k, v, attn_mask=bias)
        return a, b, c, w


def torch_attention(q, k, v, keep, bias):
    F = torch.nn.functional
    a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    b = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    w = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5 + bias, dim=-1)
    return a, b, w @ v, w


def run_onnx(model, args, tmp_path, dynamo):
    path = str(tmp_path / "model.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, path, dynamo=dynamo)
    graph = onnx.load(path).graph
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert len(names) == len(args)  # the dynamo=False bug: a graph with no inputs
    outs = session.run(None, {n: a.numpy() for n, a in zip(names, args)})
    return {node.op_type for node in graph.node}, [torch.from_numpy(o) for o in outs]


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_onnx_mixed_model_matches_torch(tmp_path, dynamo):
    fast = Mixed(fnn).eval()
    ref = Mixed(torch.nn).eval()
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(B, T, IN)
    ops, outs = run_onnx(fast, (x,), tmp_path, dynamo)
    # the dynamo exporter writes relu RNNs as Gemm/Relu loops (torch's own RNN too)
    assert {"LSTM", "GRU", "Softmax"} | ({"RNN"} if not dynamo else set()) <= ops
    with torch.no_grad():
        expected = ref(x)
    assert len(outs) == len(expected)
    for got, want in zip(outs, expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_onnx_functional_attention_matches_torch(tmp_path, dynamo):
    q, k, v = torch.randn(B, 2, T, E), torch.randn(B, 2, T + 1, E), torch.randn(B, 2, T + 1, E)
    keep = torch.rand(T, T + 1) > 0.3
    keep[:, 0] = True
    bias = torch.randn(T, T + 1)
    _, outs = run_onnx(Attention(), (q, k, v, keep, bias), tmp_path, dynamo)
    for got, want in zip(outs, torch_attention(q, k, v, keep, bias), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


# ---- torch.ao dynamic quantization ----------------------------------------------------------


class QNet(torch.nn.Module):
    def __init__(self, nn):
        super().__init__()
        self.lstm, self.gru, self.rnn = nn.LSTM(IN, H), nn.GRU(H, H), nn.RNN(H, H)
        self.lstm_cell, self.gru_cell, self.rnn_cell = nn.LSTMCell(H, H), nn.GRUCell(H, H), nn.RNNCell(H, H)
        self.mha = nn.MultiheadAttention(H, 2)
        self.enc = nn.TransformerEncoderLayer(H, 2, 8, dropout=0.0)
        self.fc = nn.Linear(H, 2)

    def forward(self, x):
        y = self.rnn(self.gru(self.lstm(x)[0])[0])[0]
        y = self.enc(self.mha(y, y, y)[0])
        h, _ = self.lstm_cell(y[0])
        h = self.rnn_cell(y[2], self.gru_cell(y[1], h))
        return self.fc(y), self.fc(h)


def _fastseq_spec(spec):
    """A spec naming torch.nn classes, with fastseq's classes instead where fastseq has one."""
    return {getattr(fnn, c.__name__) for c in spec}


SPECS = {
    "default": lambda: None,
    "torch-classes": lambda: {torch.nn.LSTM, torch.nn.GRU, torch.nn.LSTMCell, torch.nn.GRUCell,
                              torch.nn.RNNCell, torch.nn.Linear},
    "fastseq-classes": lambda: _fastseq_spec({torch.nn.LSTM, torch.nn.GRU, torch.nn.LSTMCell,
                                              torch.nn.GRUCell, torch.nn.RNNCell, torch.nn.Linear}),
    "lstm-only": lambda: {torch.nn.LSTM: torch.ao.quantization.default_dynamic_qconfig},
}


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
@pytest.mark.parametrize("dtype", [torch.qint8, torch.float16])
@pytest.mark.parametrize("spec", list(SPECS))
def test_quantize_dynamic_gives_torchs_quantized_modules(spec, dtype):
    from torch.ao.quantization import quantize_dynamic
    fast = QNet(fnn).eval()
    ref = QNet(torch.nn).eval()
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(T, B, IN)
    with torch.no_grad():
        float_out = flat(fast(x))
    q_fast = quantize_dynamic(fast, SPECS[spec](), dtype=dtype)
    ref_spec = SPECS[spec]()
    if spec == "fastseq-classes":
        ref_spec = {torch.nn.Linear if c is fnn.Linear else c.__mro__[2] for c in ref_spec}
    q_ref = quantize_dynamic(ref, ref_spec, dtype=dtype)
    fast_types = {n: type(m) for n, m in q_fast.named_modules() if n}
    ref_types = {n: type(m) for n, m in q_ref.named_modules() if n}
    assert fast_types.keys() == ref_types.keys()
    for n, t in ref_types.items():
        if t.__module__.startswith("torch.ao.nn.quantized"):
            assert fast_types[n] is t, n          # torch's own quantized class
        else:                                     # left float, as torch leaves its layer
            assert fast_types[n] is t or issubclass(fast_types[n], t), n
    if spec != "lstm-only":
        assert type(q_fast.lstm).__name__ == "LSTM" and q_fast.lstm.__module__.startswith("torch.ao")
    with torch.no_grad():
        got, want = flat(q_fast(x)), flat(q_ref(x))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert (got - float_out).abs().max() < 0.05


# ---- torch.func -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", LAYERS)
def test_jacrev_and_grad_match_torch(name, dtype):
    fast, ref = twins(name, dtype)
    x = sample(name, dtype)
    jac = [jacrev(lambda x, m=m: call(name, m, x))(x) for m in (fast, ref)]
    torch.testing.assert_close(jac[0], jac[1])
    params = {k: v.detach() for k, v in fast.named_parameters()}
    grads = [grad(lambda p, m=m: _param_loss(name, m, p, x))(params) for m in (fast, ref)]
    torch.testing.assert_close(grads[0], grads[1])


def _param_loss(name, module, params, x):
    args = {"MHA": (x, x, x), "Decoder": (x, x)}.get(name, (x,))
    return flat(functional_call(module, params, args)).square().sum()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", LAYERS)
def test_vmap_matches_torch(name, dtype):
    fast, ref = twins(name, dtype)
    xs = torch.stack([sample(name, dtype) for _ in range(3)])
    results = []
    for m in (fast, ref):
        try:
            results.append(vmap(lambda x, m=m: call(name, m, x))(xs))
        except RuntimeError as e:  # torch has no batching rule for aten::lstm & co.
            results.append(e)
    if isinstance(results[1], Exception):
        assert isinstance(results[0], RuntimeError) and str(results[0]) == str(results[1])
    else:
        torch.testing.assert_close(results[0], results[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_functional_attention_under_torch_func(dtype):
    q, k, v = (torch.randn(B, 2, T, E, dtype=dtype) for _ in range(3))
    keep = torch.rand(T, T) > 0.3
    keep[:, 0] = True
    for fn, ref_fn in ((FF.scaled_dot_product_attention, torch.nn.functional.scaled_dot_product_attention),):
        f = lambda q, fn=fn: fn(q, k, v, attn_mask=keep)  # noqa: E731
        g = lambda q, fn=ref_fn: fn(q, k, v, attn_mask=keep)  # noqa: E731
        torch.testing.assert_close(jacrev(f)(q), jacrev(g)(q))
        torch.testing.assert_close(vmap(f)(q), vmap(g)(q))
        torch.testing.assert_close(grad(lambda q: f(q).sum())(q), grad(lambda q: g(q).sum())(q))
    # with weights: the same pair as eager fastseq, and vmap over it
    eager = FF.scaled_dot_product_attention_with_weights(q, k, v, attn_mask=keep)
    mapped = vmap(lambda q, k, v: FF.scaled_dot_product_attention_with_weights(q, k, v, attn_mask=keep))(q, k, v)
    for a, b in zip(mapped, eager, strict=True):
        torch.testing.assert_close(a, b)


# ---- TorchScript ------------------------------------------------------------------------------


# torch scripts an RNN's overloaded forward only where a scripted caller uses it (a bare
# torch.jit.script(torch.nn.LSTM(...)) has no forward), so each layer sits in a typed caller.
class _CallLSTM(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, (h, c) = self.m(x)
        return torch.cat([out.flatten(), h.flatten(), c.flatten()])


class _CallGRU(_CallLSTM):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, h = self.m(x)
        return torch.cat([out.flatten(), h.flatten()])


class _CallLSTMCell(_CallLSTM):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, c = self.m(x)
        return torch.cat([h.flatten(), c.flatten()])


class _CallCell(_CallLSTM):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x)


class _CallMHA(_CallLSTM):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, w = self.m(x, x, x)
        assert w is not None
        return torch.cat([out.flatten(), w.flatten()])


class _CallDecoder(_CallLSTM):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x, x)


CALLERS = {"LSTM": _CallLSTM, "GRU": _CallGRU, "RNN": _CallGRU, "LSTMCell": _CallLSTMCell,
           "GRUCell": _CallCell, "RNNCell": _CallCell, "MHA": _CallMHA, "Encoder": _CallCell,
           "Decoder": _CallDecoder}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", LAYERS)
def test_script_and_freeze_match_eager(name, dtype):
    fast, ref = twins(name, dtype)
    model = CALLERS[name](fast).eval()
    x = sample(name, dtype)
    with torch.no_grad():
        eager = model(x)
        torch.testing.assert_close(eager.flatten(), call(name, fast, x))
        scripted = torch.jit.script(model)
        torch.testing.assert_close(scripted(x), eager)
        torch.testing.assert_close(torch.jit.freeze(scripted)(x), eager)
        buf = io.BytesIO()
        torch.jit.save(scripted, buf)
        buf.seek(0)
        torch.testing.assert_close(torch.jit.load(buf)(x), eager)
        torch.testing.assert_close(torch.jit.script(CALLERS[name](ref).eval())(x), eager)
    # the scripted module holds the layer's parameters, not copies
    assert {p.data_ptr() for p in fast.parameters()} == {p.data_ptr() for p in scripted.parameters()}


class ScriptNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = fnn.LSTM(IN, H, batch_first=True)
        self.enc = fnn.TransformerEncoderLayer(H, 2, 8, dropout=0.0, batch_first=True)
        self.cell = fnn.GRUCell(H, H)

    def forward(self, x):
        y, _ = self.lstm(x)
        y = self.enc(y)
        a = FF.scaled_dot_product_attention(y, y, y, is_causal=True)
        b, w = FF.scaled_dot_product_attention_with_weights(y, y, y)
        return self.cell(a[:, 0] + b[:, 0]), w


def test_script_model_with_layers_and_functional_attention():
    model = ScriptNet().eval()
    x = torch.randn(B, T, IN)
    with torch.no_grad():
        eager = flat(model(x))
        frozen = torch.jit.freeze(torch.jit.script(model))
        torch.testing.assert_close(flat(frozen(x)), eager)
        # torch.jit.script writes the prepared torch twins back into the eager model (torch's
        # behaviour for __prepare_scriptable__): same parameters, same results.
        assert type(model.lstm) is torch.nn.LSTM
        torch.testing.assert_close(flat(model(x)), eager)


def test_trace_matches_eager():
    model = Mixed(fnn).eval()
    x = torch.randn(B, T, IN)
    with torch.no_grad():
        eager = flat(model(x))
        traced = torch.jit.trace(model, (x,))
        torch.testing.assert_close(flat(traced(x)), eager)
        other = torch.randn(B, T, IN)  # a real graph of the input, not constants
        torch.testing.assert_close(flat(traced(other)), flat(model(other)))


# ---- weights_only loading of whole pickled models --------------------------------------------


class WNet(torch.nn.Module):
    def __init__(self, nn):
        super().__init__()
        self.layers = nn.ModuleList([make_layer(nn, n) for n in LAYERS])


def _resolve(path):
    module, _, name = path.rpartition(".")
    while module not in importlib.sys.modules:
        module, _, outer = module.rpartition(".")
        name = f"{outer}.{name}"
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _saved(model):
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    return buf


def _load(buf, allow=None):
    buf.seek(0)
    if allow is None:
        return torch.load(buf, weights_only=True)
    with torch.serialization.safe_globals(allow):
        return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_weights_only_load_of_whole_model_as_torch(dtype):
    fast = WNet(fnn).to(dtype)
    ref = WNet(torch.nn).to(dtype)
    ref.load_state_dict(fast.state_dict())
    fast_buf, ref_buf = _saved(fast), _saved(ref)
    torch_unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(ref_buf))
    fast_unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(fast_buf))
    torch_layer_names = {f"{c.__module__}.{c.__qualname__}" for c in
                         (type(m) for m in ref.layers)}
    # fastseq's classes are not among the globals a user has to allow; the rest are torch's.
    assert fast_unsafe == torch_unsafe - torch_layer_names
    # without the context manager both refuse the file (WNet, Linear, ... are not allowed)
    for buf in (fast_buf, ref_buf):
        with pytest.raises(pickle.UnpicklingError):
            _load(buf)
    # the pytorch/examples pattern: allow the torch classes the torch model needs
    allow = [_resolve(p) for p in sorted(torch_unsafe)]
    loaded_ref, loaded_fast = _load(ref_buf, allow), _load(fast_buf, allow)
    assert [type(m) for m in loaded_fast.layers] == [type(m) for m in fast.layers]
    for name, a, b, c in zip(LAYERS, loaded_fast.layers, loaded_ref.layers, fast.layers):
        x = sample(name, dtype)
        torch.testing.assert_close(call(name, a.eval(), x), call(name, b.eval(), x))
        torch.testing.assert_close(call(name, a, x), call(name, c.eval(), x))


def test_weights_only_load_of_a_bare_fastseq_layer():
    """fastseq's classes are allowlisted at import; torch's are not (documented difference:
    a file holding only fastseq layers loads where the torch equivalent needs safe_globals)."""
    with pytest.raises(pickle.UnpicklingError):
        _load(_saved(torch.nn.LSTM(IN, H)))
    lstm = fnn.LSTM(IN, H)
    loaded = _load(_saved(lstm))
    assert type(loaded) is fnn.LSTM
    x = sample("LSTM")
    torch.testing.assert_close(call("LSTM", loaded, x), call("LSTM", lstm, x))
