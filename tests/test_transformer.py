"""fastseq.nn Transformer classes against torch.nn's: same weights from the same seed,
state_dicts load both ways, same outputs and gradients, fastseq attention inside, and
torch's native fast path (fused encoder layer, nested tensors) never taken."""
import warnings

import pytest
import torch
import torch.nn.functional as F

import fastseq.nn as fnn
import fastseq.nn.functional as fF

TOL = {torch.float64: dict(rtol=1e-9, atol=1e-10), torch.float32: dict(rtol=2e-4, atol=5e-5)}


def build_pair(name, *args, seed=0, **kwargs):
    """The torch class and the fastseq class built from the same seed."""
    torch.manual_seed(seed)
    ref = getattr(torch.nn, name)(*args, **kwargs)
    torch.manual_seed(seed)
    fast = getattr(fnn, name)(*args, **kwargs)
    return ref, fast


def assert_same_params(ref, fast):
    sr, sf = ref.state_dict(), fast.state_dict()
    assert list(sr) == list(sf)
    for k in sr:
        assert torch.equal(sr[k], sf[k]), k


def fastseq_attention_count(module):
    mods = list(module.modules())
    n_fast = sum(isinstance(m, fnn.MultiheadAttention) for m in mods)
    n_all = sum(isinstance(m, torch.nn.MultiheadAttention) for m in mods)
    assert n_fast == n_all, f"{n_all - n_fast} torch MultiheadAttention left inside"
    return n_fast


def outputs_and_grads(module, args, kwargs):
    args = [a.detach().clone().requires_grad_() if torch.is_floating_point(a) else a for a in args]
    out = module(*args, **kwargs)
    loss = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum()
    leaves = [a for a in args if a.requires_grad] + list(module.parameters())
    return out, torch.autograd.grad(loss, leaves, allow_unused=True)


def assert_same_run(ref, fast, args, kwargs, dtype):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r_out, r_g = outputs_and_grads(ref, args, kwargs)
        f_out, f_g = outputs_and_grads(fast, args, kwargs)
    torch.testing.assert_close(f_out, r_out, **TOL[dtype])
    for i, (a, b) in enumerate(zip(r_g, f_g)):
        if a is None:
            assert b is None or not b.abs().any()
        else:
            torch.testing.assert_close(b, a, **TOL[dtype], msg=lambda m: f"grad {i}: {m}")


def seq(N, T, E, batch_first, dtype):
    return torch.randn((N, T, E) if batch_first else (T, N, E), dtype=dtype)


def padding(N, T, dtype=torch.bool):
    lengths = torch.randint(1, T + 1, (N,))
    lengths[0] = T
    m = torch.arange(T)[None, :] >= lengths[:, None]
    return m if dtype == torch.bool else torch.zeros(N, T, dtype=dtype).masked_fill(m, float("-inf"))


ENC_CFGS = [
    dict(norm_first=False, activation="relu", batch_first=False),
    dict(norm_first=True, activation="gelu", batch_first=True),
    dict(norm_first=False, activation=F.silu, batch_first=True, bias=False, layer_norm_eps=1e-3),
    dict(norm_first=True, activation=torch.nn.GELU(), batch_first=False),
]


@pytest.mark.parametrize("cfg", ENC_CFGS, ids=lambda c: "-".join(f"{k}={getattr(v, '__name__', v)}" for k, v in c.items()))
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float", "causal_hint", "mixed"])
@pytest.mark.parametrize("train", [False, True])
def test_encoder_layer(cfg, mask_kind, train):
    dtype, N, T, E, H = torch.float64, 3, 7, 12, 3
    ref, fast = build_pair("TransformerEncoderLayer", E, H, 24, 0.0, dtype=dtype, **cfg)
    assert_same_params(ref, fast)
    assert fastseq_attention_count(fast) == 1
    ref.train(train), fast.train(train)
    x = seq(N, T, E, cfg["batch_first"], dtype)
    kw = {}
    if mask_kind == "bool":
        kw = dict(src_mask=torch.rand(T, T) < 0.2, src_key_padding_mask=padding(N, T))
        kw["src_mask"].fill_diagonal_(False)
    elif mask_kind == "float":
        kw = dict(src_mask=torch.randn(T, T, dtype=dtype), src_key_padding_mask=padding(N, T, dtype))
    elif mask_kind == "causal_hint":
        kw = dict(src_mask=torch.nn.Transformer.generate_square_subsequent_mask(T, dtype=dtype), is_causal=True)
    elif mask_kind == "mixed":
        kw = dict(src_mask=torch.randn(T, T, dtype=dtype), src_key_padding_mask=padding(N, T))
    assert_same_run(ref, fast, [x], kw, dtype)


def test_encoder_layer_unbatched_and_float32():
    ref, fast = build_pair("TransformerEncoderLayer", 16, 4, 32, 0.0, batch_first=True)
    x = torch.randn(5, 16)
    assert_same_run(ref, fast, [x], dict(src_key_padding_mask=torch.tensor([0, 0, 0, 1, 1]).bool()),
                    torch.float32)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("masks", ["none", "all_bool", "all_float", "causal_detected"])
def test_decoder_layer_and_decoder(norm_first, batch_first, masks):
    dtype, N, T, S, E, H = torch.float64, 2, 5, 7, 8, 2
    ref, fast = build_pair("TransformerDecoderLayer", E, H, 16, 0.0, activation="gelu",
                           batch_first=batch_first, norm_first=norm_first, dtype=dtype)
    assert_same_params(ref, fast)
    assert fastseq_attention_count(fast) == 2
    tgt, mem = seq(N, T, E, batch_first, dtype), seq(N, S, E, batch_first, dtype)
    kw = {}
    if masks == "all_bool":
        kw = dict(tgt_mask=torch.triu(torch.ones(T, T, dtype=torch.bool), 1),
                  memory_mask=torch.rand(T, S) < 0.2, tgt_key_padding_mask=padding(N, T),
                  memory_key_padding_mask=padding(N, S))
        kw["memory_mask"][:, 0] = False
    elif masks == "all_float":
        kw = dict(tgt_mask=torch.randn(T, T, dtype=dtype), memory_mask=torch.randn(T, S, dtype=dtype),
                  tgt_key_padding_mask=padding(N, T, dtype), memory_key_padding_mask=padding(N, S, dtype))
    elif masks == "causal_detected":
        kw = dict(tgt_mask=torch.nn.Transformer.generate_square_subsequent_mask(T, dtype=dtype))
    assert_same_run(ref, fast, [tgt, mem], kw, dtype)
    # the stack: torch.nn.TransformerDecoder of torch layers vs fastseq's of fastseq layers
    norm = torch.nn.LayerNorm(E, dtype=dtype)
    ref_dec = torch.nn.TransformerDecoder(ref, 2, norm)
    fast_dec = fnn.TransformerDecoder(fast, 2, norm)
    assert fastseq_attention_count(fast_dec) == 4
    fast_dec.load_state_dict(ref_dec.state_dict(), strict=True)
    assert_same_run(ref_dec, fast_dec, [tgt, mem], kw, dtype)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("mask_kind", ["kpm", "causal", "causal_bool_kpm"])
def test_encoder_eval_never_takes_torch_fast_path(monkeypatch, batch_first, mask_kind):
    """torch's eval encoder (batch_first, no grad, padding mask) packs a nested tensor and
    runs _transformer_encoder_layer_fwd; fastseq's must run its own attention instead and
    agree with torch's regular path (torch's nested path zeroes padded positions)."""
    dtype, N, T, E, H = torch.float32, 3, 6, 8, 2
    torch.manual_seed(0)
    ref_layer = torch.nn.TransformerEncoderLayer(E, H, 16, 0.1, batch_first=batch_first)
    torch.manual_seed(0)
    fast_layer = fnn.TransformerEncoderLayer(E, H, 16, 0.1, batch_first=batch_first)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = torch.nn.TransformerEncoder(ref_layer, 2, enable_nested_tensor=True).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")     # and no nested-tensor warning from fastseq's
        fast = fnn.TransformerEncoder(fast_layer, 2, enable_nested_tensor=True).eval()
    assert fast.enable_nested_tensor and not fast.use_nested_tensor
    assert_same_params(ref, fast)
    x = seq(N, T, E, batch_first, dtype)
    kpm = padding(N, T)
    kw = {"kpm": dict(src_key_padding_mask=kpm),
          "causal": dict(mask=torch.nn.Transformer.generate_square_subsequent_mask(T)),
          "causal_bool_kpm": dict(mask=torch.triu(torch.ones(T, T, dtype=torch.bool), 1),
                                  src_key_padding_mask=kpm)}[mask_kind]
    with torch.no_grad():
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            expected = ref(x, **kw)
        finally:
            torch.backends.mha.set_fastpath_enabled(True)
        calls = []
        real = fF.scaled_dot_product_attention
        monkeypatch.setattr(fF, "scaled_dot_product_attention",
                            lambda *a, **k: calls.append(k.get("is_causal")) or real(*a, **k))
        for name in ("_transformer_encoder_layer_fwd", "_native_multi_head_attention",
                     "_nested_tensor_from_mask"):
            monkeypatch.setattr(torch, name, lambda *a, _n=name, **k: pytest.fail(f"torch.{_n} used"))
        got = fast(x, **kw)
    assert len(calls) == 2
    # a causal mask with no padding mask is passed to the kernel as is_causal=True
    assert calls == [mask_kind == "causal"] * 2
    torch.testing.assert_close(got, expected, **TOL[dtype])


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_transformer_full(norm_first, batch_first):
    dtype, N, S, T, E, H = torch.float64, 2, 6, 5, 8, 2
    ref, fast = build_pair("Transformer", E, H, 2, 2, 16, 0.0, batch_first=batch_first,
                           norm_first=norm_first, dtype=dtype)
    assert_same_params(ref, fast)
    assert fastseq_attention_count(fast) == 2 + 2 * 2
    assert isinstance(fast.encoder, fnn.TransformerEncoder)
    assert all(isinstance(layer, fnn.TransformerEncoderLayer) for layer in fast.encoder.layers)
    assert all(isinstance(layer, fnn.TransformerDecoderLayer) for layer in fast.decoder.layers)
    src, tgt = seq(N, S, E, batch_first, dtype), seq(N, T, E, batch_first, dtype)
    kw = dict(tgt_mask=fast.generate_square_subsequent_mask(T, dtype=dtype),
              src_key_padding_mask=padding(N, S), memory_key_padding_mask=padding(N, S),
              tgt_key_padding_mask=padding(N, T), tgt_is_causal=True)
    assert_same_run(ref, fast, [src, tgt], kw, dtype)
    assert_same_run(ref, fast, [src, tgt], {}, dtype)


def test_state_dict_both_ways_and_seed():
    ref, fast = build_pair("Transformer", 16, 4, 1, 2, 32, seed=5)
    assert_same_params(ref, fast)
    torch.manual_seed(11)
    other = torch.nn.Transformer(16, 4, 1, 2, 32)
    fast.load_state_dict(other.state_dict(), strict=True)
    assert_same_params(other, fast)
    torch.manual_seed(12)
    ref.load_state_dict(fnn.Transformer(16, 4, 1, 2, 32).state_dict(), strict=True)
    for name in ("TransformerEncoderLayer", "TransformerDecoderLayer"):
        a, b = build_pair(name, 8, 2, 16, seed=3)
        assert_same_params(a, b)
        b.load_state_dict(a.state_dict(), strict=True)
        a.load_state_dict(b.state_dict(), strict=True)


def test_dropout_train_statistics():
    ref, fast = build_pair("TransformerEncoderLayer", 16, 4, 32, 0.5, batch_first=True)
    x = torch.randn(4, 9, 16)
    fast.train()
    a, b = fast(x), fast(x)
    assert a.shape == x.shape and not torch.allclose(a, b)
    fast.eval(), ref.eval()
    torch.testing.assert_close(fast(x), ref(x), **TOL[torch.float32])


def test_subclass_and_init_calls():
    """`import fastseq.nn as nn` code: a subclass of nn.Transformer with nn.init calls."""
    nn = fnn

    class Seq2Seq(nn.Transformer):
        def __init__(self, vocab, d_model):
            super().__init__(d_model=d_model, nhead=2, num_encoder_layers=1,
                             num_decoder_layers=1, dim_feedforward=16, dropout=0.0,
                             batch_first=True)
            self.embed = nn.Embedding(vocab, d_model)
            self.head = nn.Linear(d_model, vocab)
            nn.init.normal_(self.embed.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

        def forward(self, src, tgt):
            mask = self.generate_square_subsequent_mask(tgt.size(1))
            h = super().forward(self.embed(src), self.embed(tgt), tgt_mask=mask, tgt_is_causal=True)
            return self.head(h)

    model = Seq2Seq(11, 8)
    assert fastseq_attention_count(model) == 3
    src, tgt = torch.randint(0, 11, (2, 5)), torch.randint(0, 11, (2, 4))
    logits = model(src, tgt)
    assert logits.shape == (2, 4, 11)
    logits.sum().backward()
    assert model.encoder.layers[0].self_attn.in_proj_weight.grad is not None


def test_custom_encoder_decoder_kept():
    enc = fnn.TransformerEncoder(fnn.TransformerEncoderLayer(8, 2, 16), 1)
    model = fnn.Transformer(8, 2, custom_encoder=enc, num_decoder_layers=1, dim_feedforward=16)
    assert model.encoder is enc


def test_torch_compile_fullgraph():
    """MultiheadAttention and the encoder layer trace without graph breaks (the fused op is
    a torch.library custom op), and compiled results equal eager ones."""
    torch._dynamo.reset()
    mha = fnn.MultiheadAttention(8, 2, batch_first=True)
    layer = fnn.TransformerEncoderLayer(8, 2, 16, 0.0, batch_first=True)
    x = torch.randn(2, 5, 8, requires_grad=True)
    kpm = torch.tensor([[0, 0, 0, 0, 0], [0, 0, 0, 1, 1]], dtype=torch.bool)
    c_mha = torch.compile(mha, backend="aot_eager", fullgraph=True)
    for nw in (True, False):
        got, expected = c_mha(x, x, x, key_padding_mask=kpm, need_weights=nw), mha(x, x, x, key_padding_mask=kpm, need_weights=nw)
        torch.testing.assert_close(got[0], expected[0])
        if nw:
            torch.testing.assert_close(got[1], expected[1])
    c_layer = torch.compile(layer, backend="aot_eager", fullgraph=True)
    out = c_layer(x, src_key_padding_mask=kpm)
    torch.testing.assert_close(out, layer(x, src_key_padding_mask=kpm))
    (g,) = torch.autograd.grad(out.sum(), x)
    (g_ref,) = torch.autograd.grad(layer(x, src_key_padding_mask=kpm).sum(), x)
    torch.testing.assert_close(g, g_ref)
