"""Loads the compiled extension fastseq._C and turns its absence into an actionable error."""
import torch  # noqa: F401  (loads libtorch before the extension links against it)

try:
    from . import _C  # type: ignore[attr-defined]
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "fastseq's compiled extension fastseq._C could not be imported (%s). Build it with "
        "`pip install --no-build-isolation -e .` (or `make build`) from the fastseq source tree, "
        "with the same torch that is installed now." % exc
    ) from exc


def require_cuda_build(device):
    """Raise a clear error when a CUDA tensor reaches a build without CUDA kernels."""
    if torch.device(device).type == "cuda" and not _C.built_with_cuda():
        raise RuntimeError(
            "fastseq was built without CUDA; rebuild with CUDA: on a machine with nvcc and a "
            "CUDA-enabled torch run `FASTSEQ_CUDA=1 pip install --no-build-isolation -e .`"
        )
