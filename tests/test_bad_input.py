"""Every input check: bad input raises a clear error naming the argument, the expected
and the actual value; nothing crashes the interpreter or returns a silent wrong answer."""
import pytest
import torch

import fastseq
import fastseq.nn as fnn


# ---- lstm ----


# ---- gru / rnn ----


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
    (*_qkv(), {"dropout_p": 1.0}, r"dropout_p must be in \[0, 1\), got 1.0"),
    (*_qkv(), {"dropout_p": -0.1}, r"dropout_p must be in \[0, 1\), got -0.1"),
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
                            "--out", str(tmp_path), "--quiet"], capsys)
    assert "--data: no such file or folder" in err and "nope.txt" in err


def test_models_empty_corpus(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    err = _model_cli_error(["train", "gpt", "--data", str(tmp_path / "empty.txt"),
                            "--out", str(tmp_path), "--quiet"], capsys)
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
