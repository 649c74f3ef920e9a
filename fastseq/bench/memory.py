"""Peak memory of one call: CUDA's allocator counter, or on CPU the profiler's allocation
events replayed in order (with kineto's profiler_start / profiler_stop lines kept off stderr)."""
import contextlib
import os
import sys
import tempfile

import torch

# Written straight to file descriptor 2 by libkineto's SyncActivityProfilerHandler at each
# profiler start and stop; nothing in torch's API turns them off.
_KINETO_LINES = ("] profiler_start", "] profiler_stop")


@contextlib.contextmanager
def _without_kineto_lines():
    """Sends fd 2 to a temporary file while the profiler runs, then passes on every line
    that is not one of kineto's start/stop notices, so real warnings still show."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode(errors="replace").splitlines(keepends=True):
                if not any(mark in line for mark in _KINETO_LINES):
                    sys.stderr.write(line)
            sys.stderr.flush()


def peak_memory_mb(fn, device: torch.device) -> float:
    """Peak memory allocated above the baseline during one call of fn, in MiB."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with _without_kineto_lines():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == DeviceType.CPU]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return peak / 2**20
