"""Shared test fixtures: device parametrisation (CUDA cases skip without a GPU), the seed, one
torch thread for the CLI and model modules, and the environment of CLI subprocesses."""
import os
from pathlib import Path

import pytest
import torch

import fastseq
import fastseq.nn as fnn

HAS_CUDA = torch.cuda.is_available() and fastseq._C.built_with_cuda()

requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and a CUDA build of fastseq")

DEVICES = ["cpu", pytest.param("cuda", marks=[requires_cuda, pytest.mark.cuda])]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a whole module (modules opt in with pytestmark)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cli_env(**extra):
    """The environment of a `python -m fastseq` subprocess: one OpenMP thread, this checkout
    first on the path."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}


def recurrent_pair(kind, *args, **kwargs):
    """(torch module, fastseq module) of kind "lstm", "gru", "rnn_tanh" or "rnn_relu" with
    identical weights (fastseq's loaded from torch's state_dict)."""
    if kind == "lstm":
        ref, fast = torch.nn.LSTM(*args, **kwargs), fnn.LSTM(*args, **kwargs)
    elif kind == "gru":
        ref, fast = torch.nn.GRU(*args, **kwargs), fnn.GRU(*args, **kwargs)
    else:
        nl = kind.split("_")[1]
        ref, fast = torch.nn.RNN(*args, nonlinearity=nl, **kwargs), fnn.RNN(*args, nonlinearity=nl, **kwargs)
    fast.load_state_dict(ref.state_dict())
    return ref, fast
