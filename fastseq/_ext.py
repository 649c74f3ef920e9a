"""Loads the compiled extension fastseq._C and turns its absence into an actionable error."""
import importlib.util

import torch  # noqa: F401  (loads libtorch before the extension links against it)

_BUILD_HINT = ("Build it with `pip install --no-build-isolation -e .` (or `make build`) from the "
               "fastseq source tree, with the same torch that is installed now.")

if importlib.util.find_spec(__package__ + "._C") is None:
    raise ImportError("fastseq's compiled extension fastseq._C is not built. " + _BUILD_HINT)
try:
    from . import _C  # type: ignore[attr-defined]
except ImportError as exc:  # built, but against another torch or python
    raise ImportError("fastseq's compiled extension fastseq._C could not be loaded (%s). %s"
                      % (exc, _BUILD_HINT)) from exc


def require_cuda_build(device):
    """Raise a clear error when a CUDA tensor reaches a build without CUDA kernels."""
    if torch.device(device).type == "cuda" and not _C.built_with_cuda():
        raise RuntimeError(
            "fastseq was built without CUDA; rebuild with CUDA: on a machine with nvcc and a "
            "CUDA-enabled torch run `FASTSEQ_CUDA=1 pip install --no-build-isolation -e .`"
        )
