"""fastseq: fused C++/CUDA kernels and drop-in PyTorch layers for sequence models.

Switch a model by changing one import: ``import fastseq.nn as nn``.
"""
from ._ext import _C  # noqa: F401  (fails early with a message on how to build)

__version__ = "0.1.0"

from . import ops, nn  # noqa: E402,F401

__all__ = ["nn", "ops", "__version__"]
