"""Every input check: bad input raises a clear error naming the argument, the expected
and the actual value; nothing crashes the interpreter or returns a silent wrong answer."""
import pytest
import torch

import fastseq
import fastseq.nn as fnn


# ---- lstm ----


# ---- gru / rnn ----


# ---- attention (functional) ----


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
