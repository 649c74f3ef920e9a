"""Side-by-side timing: reference and fastseq run interleaved in one process, in rounds of
repeated samples; stalled samples are left out, noisy cases get more rounds while the
re-run budget lasts; ratio = reference / fastseq median (above 1 means fastseq is faster)."""
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from .memory import peak_memory_mb
from .stats import NoisePolicy, SideStats, noise_reasons, side_stats
from .timing import measure


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
    flops: Optional[float] = None                        # of one call, see flops.py
    dims: Dict[str, int] = field(default_factory=dict)   # the sizes, for scaling curves


@dataclass
class BenchResult:
    case: BenchCase
    device: str
    ref: SideStats
    fast: SideStats
    max_abs_err: float
    noise: List[str]             # why the case stayed noisy; empty when it is clean
    rounds: int
    ref_peak_mb: Optional[float] = None
    fast_peak_mb: Optional[float] = None

    @property
    def ref_ms(self):
        return self.ref.median_s * 1e3

    @property
    def fast_ms(self):
        return self.fast.median_s * 1e3

    @property
    def ratio(self):
        return self.ref_ms / self.fast_ms if self.fast_ms > 0 else float("nan")

    @property
    def noisy(self):
        return bool(self.noise)

    def gflops(self, ms):
        return self.case.flops / ms / 1e6 if self.case.flops and ms > 0 else None


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


@dataclass
class RerunBudget:
    """Seconds that extra rounds of noisy cases may still take, shared by the whole run."""
    seconds: float

    def affords(self, round_s):
        return round_s <= self.seconds

    def spend(self, round_s):
        self.seconds -= round_s


@dataclass
class RunSettings:
    repeats: int = 7                 # interleaved sample pairs per round
    min_sample_s: float = 0.02       # each sample loops the call for at least this long
    max_rounds: int = 3              # rounds a noisy case may get in all
    policy: NoisePolicy = field(default_factory=NoisePolicy)
    threads: int = 1                 # torch threads, for CPU time per wall time x threads
    budget: RerunBudget = field(default_factory=lambda: RerunBudget(0.0))


def _round(ref_fn, fast_fn, device, inner, settings, samples):
    """Appends one round of interleaved samples; returns how long it took."""
    start = time.perf_counter()
    for r in range(settings.repeats):
        # Alternate who goes first so drift (turbo, other load) hits both alike.
        order = ((ref_fn, samples["ref"]), (fast_fn, samples["fast"]))
        for fn, acc in (order if r % 2 == 0 else order[::-1]):
            acc.append(measure(fn, device, inner, settings.threads))
    return time.perf_counter() - start


def run_case(case: BenchCase, device: torch.device, settings: RunSettings) -> BenchResult:
    ref_fn, fast_fn = case.setup()
    ref_out, fast_out = ref_fn(), fast_fn()          # warm-up, and the accuracy check
    err = max_abs_error(ref_out, fast_out)
    del ref_out, fast_out
    one = max(measure(ref_fn, device, 1, 1)[0], measure(fast_fn, device, 1, 1)[0], 1e-6)
    inner = max(1, int(math.ceil(settings.min_sample_s / one)))
    samples = {"ref": [], "fast": []}
    took, rounds = _round(ref_fn, fast_fn, device, inner, settings, samples), 1
    while True:
        sides = [side_stats(*zip(*samples[k]), settings.threads, settings.policy) for k in ("ref", "fast")]
        noise = noise_reasons(sides, settings.policy)
        # Another round (pooled with the earlier ones) only if the budget left can pay for it.
        if not noise or rounds >= settings.max_rounds or not settings.budget.affords(took):
            break
        took = _round(ref_fn, fast_fn, device, inner, settings, samples)
        settings.budget.spend(took)
        rounds += 1
    res = BenchResult(case, str(device), sides[0], sides[1], err, noise, rounds)
    if case.memory:
        res.ref_peak_mb = peak_memory_mb(ref_fn, device)
        res.fast_peak_mb = peak_memory_mb(fast_fn, device)
    return res
