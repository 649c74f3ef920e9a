"""The framework-free CUDA kernels must compile with nvcc even where no GPU or CUDA torch
exists, so a CPU-only machine still catches a broken kernel."""
import glob
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = sorted(glob.glob(os.path.join(ROOT, "csrc", "**", "*_kernels.cu"), recursive=True))
NVCC = shutil.which("nvcc") or (os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")
                                if os.environ.get("CUDA_HOME") else None)


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
@pytest.mark.parametrize("source", KERNELS, ids=[os.path.relpath(k, ROOT) for k in KERNELS])
def test_kernel_compiles_with_nvcc(source, tmp_path):
    cmd = [NVCC, "-c", "-arch=sm_90", "-std=c++17", "-O1", "-I", os.path.join(ROOT, "csrc"),
           source, "-o", str(tmp_path / "k.o")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"


def test_kernels_are_framework_free():
    # The .cu files must not reach for torch/ATen: a CPU-only torch wheel lacks the
    # CUDA headers those would pull in.
    for source in KERNELS + glob.glob(os.path.join(ROOT, "csrc", "**", "*_kernels.cuh"), recursive=True):
        text = open(source).read()
        for banned in ("#include <torch", "#include <ATen", "#include <c10"):
            assert banned not in text, f"{source} includes {banned}"
