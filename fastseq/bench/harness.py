"""Side-by-side timing: reference and fastseq run interleaved in one process, medians
of repeated samples, ratio = reference / fastseq (above 1 means fastseq is faster)."""
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch


@dataclass
class BenchCase:
    op: str                      # "lstm", "gru", "attention", ...
    label: str                   # the shapes, e.g. "T=35 B=8 I=64 H=128 L=1"
    mode: str                    # "train" (forward+backward) or "infer"
    reference: str               # what fastseq is compared against, e.g. "torch.nn.LSTM"
    # Builds inputs and returns (reference_fn, fastseq_fn). Each fn runs the work once and
    # returns the tensors to compare (outputs, and gradients in train mode).
    setup: Callable[[], Tuple[Callable[[], Any], Callable[[], Any]]]
    note: str = ""               # e.g. "dropout path falls back to ..." shown in the table
    memory: bool = False         # also measure peak memory of one call of each


@dataclass
class BenchResult:
    case: BenchCase
    device: str
    ref_ms: float
    fast_ms: float
    max_abs_err: float
    ref_peak_mb: Optional[float] = None
    fast_peak_mb: Optional[float] = None

    @property
    def ratio(self):
        return self.ref_ms / self.fast_ms if self.fast_ms > 0 else float("nan")


def _flatten(out) -> List[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flatten(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _flatten(o)]
    return []


def max_abs_error(a, b) -> float:
    ta, tb = _flatten(a), _flatten(b)
    if len(ta) != len(tb):
        raise ValueError(f"reference returned {len(ta)} tensors, fastseq {len(tb)}")
    err = 0.0
    for x, y in zip(ta, tb):
        if x.shape != y.shape:
            raise ValueError(f"shape mismatch {tuple(x.shape)} vs {tuple(y.shape)}")
        if x.numel():
            err = max(err, (x.detach().double() - y.detach().double()).abs().max().item())
    return err


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(fn, device, inner):
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / inner


def peak_memory_mb(fn, device) -> float:
    """Peak memory allocated above the baseline during one call of fn.

    CUDA: the caching allocator's peak counter. CPU: the profiler's allocation events,
    replayed in order to find the high-water mark of live bytes.
    """
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    for e in events:
        if e.device_type() != DeviceType.CPU:
            continue
        live += e.nbytes()
        peak = max(peak, live)
    return peak / 2**20


def run_case(case: BenchCase, device: torch.device, repeats: int = 7,
             min_sample_s: float = 0.02) -> BenchResult:
    ref_fn, fast_fn = case.setup()
    ref_out, fast_out = ref_fn(), fast_fn()          # warm-up, and the accuracy check
    err = max_abs_error(ref_out, fast_out)
    del ref_out, fast_out
    one = max(_time_once(ref_fn, device, 1), _time_once(fast_fn, device, 1), 1e-6)
    inner = max(1, int(math.ceil(min_sample_s / one)))
    ref_t, fast_t = [], []
    for r in range(repeats):
        # Alternate who goes first so drift (turbo, other load) hits both alike.
        order = ((ref_fn, ref_t), (fast_fn, fast_t)) if r % 2 == 0 else ((fast_fn, fast_t), (ref_fn, ref_t))
        for fn, acc in order:
            acc.append(_time_once(fn, device, inner))
    res = BenchResult(case, str(device), statistics.median(ref_t) * 1e3,
                      statistics.median(fast_t) * 1e3, err)
    if case.memory:
        res.ref_peak_mb = peak_memory_mb(ref_fn, device)
        res.fast_peak_mb = peak_memory_mb(fast_fn, device)
    return res


def geomean(values):
    values = [v for v in values if v > 0 and math.isfinite(v)]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def format_table(results: List[BenchResult]) -> str:
    has_mem = any(r.ref_peak_mb is not None for r in results)
    head = ["op", "mode", "case", "reference", "torch ms", "fastseq ms", "ratio", "max abs err"]
    if has_mem:
        head += ["torch MB", "fastseq MB"]
    head += ["note"]
    rows = []
    for r in results:
        row = [r.case.op, r.case.mode, r.case.label, r.case.reference, f"{r.ref_ms:.3f}",
               f"{r.fast_ms:.3f}", f"{r.ratio:.2f}x", f"{r.max_abs_err:.1e}"]
        if has_mem:
            row += ["-" if r.ref_peak_mb is None else f"{r.ref_peak_mb:.1f}",
                    "-" if r.fast_peak_mb is None else f"{r.fast_peak_mb:.1f}"]
        row += [r.case.note]
        rows.append(row)
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(row) for row in rows]
    return "\n".join(out)


def format_summary(results: List[BenchResult]) -> str:
    groups: Dict[Tuple[str, str, str], List[float]] = {}
    for r in results:
        groups.setdefault((r.case.op, r.case.reference, r.case.mode), []).append(r.ratio)
    lines = []
    for (op, ref, mode), ratios in sorted(groups.items()):
        lines.append(f"{op:<10} {mode:<6} vs {ref:<40} geomean {geomean(ratios):.2f}x  "
                     f"min {min(ratios):.2f}x  max {max(ratios):.2f}x  ({len(ratios)} cases)")
    return "\n".join(lines)
