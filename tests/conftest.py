"""Shared test fixtures: device parametrisation (CUDA cases skip without a GPU)."""
import pytest
import torch

import fastseq

HAS_CUDA = torch.cuda.is_available() and fastseq._C.built_with_cuda()

requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device and a CUDA build of fastseq")

DEVICES = ["cpu", pytest.param("cuda", marks=[requires_cuda, pytest.mark.cuda])]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
