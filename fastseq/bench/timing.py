"""One timed sample: seconds per call and how much of the wall time the process spent on CPU.

CPU: perf_counter around the calls, process_time (all threads of the process) beside it.
CUDA: CUDA events around the calls (device time); the host's CPU/wall is still recorded."""
import time

import torch


def measure(fn, device: torch.device, inner: int, threads: int):
    """Runs fn `inner` times; returns (seconds per call, CPU time / (wall time x threads))."""
    if device.type == "cuda":
        return _measure_cuda(fn, device, inner)
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(inner):
        fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return wall / inner, cpu / (wall * threads) if wall > 0 else 1.0


def _measure_cuda(fn, device, inner):
    # One host thread drives the GPU: its CPU/wall is the host side's share of the sample.
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(device)
    c0, t0 = time.process_time(), time.perf_counter()
    start.record()
    for _ in range(inner):
        fn()
    end.record()
    end.synchronize()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return start.elapsed_time(end) / 1e3 / inner, cpu / wall if wall > 0 else 1.0
