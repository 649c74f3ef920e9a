# Build of the one extension module fastseq._C: every csrc/**/*.cpp always, and the
# CUDA sources (*_cuda.cpp, *.cu) when CUDA is wanted and available.
import glob
import os
import platform

from setuptools import setup

import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def want_cuda():
    """FASTSEQ_CUDA=1 forces CUDA, =0 forbids it; unset means 'if torch and nvcc have it'."""
    flag = os.environ.get("FASTSEQ_CUDA", "").strip()
    if flag == "0":
        return False
    has = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if flag == "1":
        if not has:
            raise RuntimeError(
                "FASTSEQ_CUDA=1 but torch.version.cuda=%r and CUDA_HOME=%r: a CUDA build needs a "
                "CUDA-enabled torch and nvcc" % (torch.version.cuda, cpp_extension.CUDA_HOME))
        return True
    return has


def sources(with_cuda):
    found = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
    cpu = [s for s in found if not s.endswith("_cuda.cpp")]
    if not with_cuda:
        return cpu
    return cpu + [s for s in found if s.endswith("_cuda.cpp")] + sorted(glob.glob("csrc/**/*.cu", recursive=True))


def cxx_flags():
    flags = ["-O3", "-std=c++20", "-fopenmp"]
    # Native tuning by default (the library is built where it runs, like a pip source
    # build); FASTSEQ_PORTABLE=1 gives a binary for any x86-64 / aarch64 machine.
    if os.environ.get("FASTSEQ_PORTABLE", "0") != "1" and platform.machine() in ("x86_64", "AMD64"):
        flags.append("-march=native")
    return flags


with_cuda = want_cuda()
define_macros = [("FASTSEQ_WITH_CUDA", "1")] if with_cuda else []
extra = {"cxx": cxx_flags()}
if with_cuda:
    arch = os.environ.get("TORCH_CUDA_ARCH_LIST")
    extra["nvcc"] = ["-O3", "--use_fast_math", "-std=c++20", "-lineinfo"]
    Extension = cpp_extension.CUDAExtension
else:
    Extension = cpp_extension.CppExtension

ext = Extension(
    name="fastseq._C",
    sources=sources(with_cuda),
    include_dirs=[os.path.join(ROOT, "csrc")],
    define_macros=define_macros,
    extra_compile_args=extra,
    extra_link_args=["-fopenmp"],
)

setup(
    ext_modules=[ext],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
