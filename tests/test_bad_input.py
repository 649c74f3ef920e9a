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
