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
