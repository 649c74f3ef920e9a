"""The machine a benchmark ran on: CPU / GPU, ISA, cores, load, torch and BLAS, and its own
GEMM rate from short probes of the GEMM libraries torch offers (the roofline every case is
compared with)."""
import os
import platform
import re
import time

import torch

from ..info import cpu_isa
from .timing import measure

BUSY_LOAD_PER_CORE = 0.5   # load average per core above which timings are not to be trusted


def isa_features():
    """ATen's SIMD level plus the matrix / vector extensions the GEMMs can use."""
    isa, _ = cpu_isa()
    names = [isa]
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        names.append("NEON")
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    names += [label for flag, label in (("avx512_bf16", "AVX512-BF16"), ("amx_tile", "AMX"))
              if flag in flags]
    return "+".join(dict.fromkeys(names))


def blas_info():
    """The BLAS and oneDNN torch was built with, from torch.__config__.show()."""
    config = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=(\w+)", config)
    parts = [blas.group(1) if blas else "unknown"]
    mkl = re.search(r"Math Kernel Library Version ([\d.]+)", config)
    if mkl:
        parts[0] += f" {mkl.group(1)}"
    dnn = re.search(r"MKL-DNN (v[\d.]+)", config)
    if dnn:
        parts.append(f"oneDNN {dnn.group(1)}")
    return ", ".join(parts)


def _best_rate(run, n, device, threads, seconds):
    best, _ = measure(run, device, 1, threads)  # also the warm-up
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        best = min(best, measure(run, device, 1, threads)[0])
    return 2.0 * n ** 3 / best / 1e9


def gemm_probes(device: torch.device, dtype: torch.dtype, threads: int, seconds: float = 0.15) -> dict:
    """Best rate (GFLOP/s) of an n x n x n product (n = 1024 on CPU, 4096 on CUDA) over
    repeated samples for about `seconds`, per library torch offers: torch.mm (MKL on CPU,
    cuBLAS on CUDA) and, on CPU float32, oneDNN's GEMM (torch.ops.mkldnn._linear_pointwise).
    MKL takes a generic path on AMD CPUs (about half oneDNN's rate there), so the machine's
    limit is the best of the two, not torch.mm alone."""
    n = 4096 if device.type == "cuda" else 1024
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen).to(device=device, dtype=dtype) for _ in range(2))
    rates = {"torch.mm": _best_rate(lambda: torch.mm(a, b), n, device, threads, seconds)}
    linear = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    if device.type == "cpu" and dtype == torch.float32 and linear is not None:
        try:
            bt = b.t().contiguous()
            rates["oneDNN"] = _best_rate(lambda: linear(a, bt, None, "none", [], ""), n, device, threads, seconds)
        except RuntimeError:  # a torch without oneDNN's linear: torch.mm alone
            pass
    return rates


def gemm_gflops(device: torch.device, dtype: torch.dtype, threads: int, seconds: float = 0.15) -> float:
    """The machine's practical GEMM peak on these threads: the best library's rate."""
    return max(gemm_probes(device, dtype, threads, seconds).values())


def describe(device: torch.device, threads: int):
    """Everything the header and the JSON `machine` object say about this machine."""
    _, model = cpu_isa()
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    info = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else model,
        "cpu": model,
        "isa": isa_features(),
        "cores": cores,
        "threads": threads,
        "load_avg": round(load, 2),
        "busy": bool(load > BUSY_LOAD_PER_CORE * cores),
        "torch": torch.__version__,
        "blas": blas_info() if device.type == "cpu" else f"cuBLAS (CUDA {torch.version.cuda})",
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    probes = gemm_probes(device, torch.float32, threads)
    info["gemm_probes_gflops"] = {k: round(v, 1) for k, v in probes.items()}
    info["gemm_peak_gflops"] = round(max(probes.values()), 1)
    info["gemm_bf16_gflops"] = round(gemm_gflops(device, torch.bfloat16, threads), 1)
    return info


def header_lines(m):
    lines = [f"device: {m['device']} = {m['device_name']}",
             f"CPU {m['cpu']} ({m['isa']}), {m['cores']} cores, {m['threads']} threads, "
             f"load {m['load_avg']:.2f} at start",
             f"torch {m['torch']}, BLAS {m['blas']}, python {m['python']}, {m['date']}",
             f"GEMM peak (best library, 1024^3): float32 {m['gemm_peak_gflops']:.0f} GFLOP/s ("
             + ", ".join(f"{k} {v:.0f}" for k, v in m.get("gemm_probes_gflops", {}).items())
             + f"), bfloat16 torch.mm {m['gemm_bf16_gflops']:.0f} GFLOP/s"]
    if m["busy"]:
        lines.append(f"WARNING: load {m['load_avg']:.2f} on {m['cores']} cores: the machine is busy, "
                     f"timings will be noisy")
    return lines
