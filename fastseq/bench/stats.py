"""Noise statistics of one benchmark case: median, spread, stalled samples, the noisy verdict."""
from dataclasses import dataclass
from typing import List, Sequence

import numpy as np


@dataclass(frozen=True)
class NoisePolicy:
    # A side whose IQR exceeds this % of its median is noisy. Measured: on an idle 2-core Xeon
    # (KVM) at 2 threads the full suite's IQRs have median 4.4%, 90th percentile 8.4%; under
    # load they pass 10% and CPU/wall drops. 5% flagged 40% of an idle run's cases.
    spread_pct: float = 10.0
    stall_ratio: float = 0.75          # stalled: CPU/wall below this fraction of the side's best sample
    min_cores: float = 0.5             # stalled: the process ran on less than this many cores
    max_stalled_fraction: float = 0.2  # noisy: more than this share of the samples stalled


@dataclass
class SideStats:
    median_s: float        # median seconds per call over the samples kept
    spread_pct: float      # interquartile range as % of that median
    cpu_per_wall: float    # median CPU time / (wall time x threads) of the samples kept
    samples: int           # samples taken
    stalled: int           # samples left out as stalled


def spread_pct(samples: Sequence[float]) -> float:
    """Interquartile range as a percentage of the median (robust to one outlier)."""
    q1, med, q3 = np.percentile(np.asarray(samples, dtype=float), [25, 50, 75])
    return float((q3 - q1) / med * 100.0) if med > 0 else float("nan")


def stalled_mask(cpu_per_wall: Sequence[float], threads: int, policy: NoisePolicy) -> np.ndarray:
    """True for the samples whose process did not get the CPU while the clock ran.

    cpu_per_wall is CPU time / (wall time x threads): 1.0 means every thread ran the whole
    sample. A side's best sample shows how busy its threads can be for this work (a serial
    op keeps one of two threads idle), so a sample is stalled when it falls well below that
    best one, or when the whole process ran on under `min_cores` cores (other jobs held it).
    """
    u = np.asarray(cpu_per_wall, dtype=float)
    best = min(float(u.max()), 1.0) if u.size else 1.0
    return (u < policy.stall_ratio * best) | (u * threads < policy.min_cores)


def side_stats(seconds: Sequence[float], cpu_per_wall: Sequence[float], threads: int,
               policy: NoisePolicy) -> SideStats:
    """Median and spread over the samples that were not stalled (all of them if fewer than
    three were clean: a median needs something to stand on)."""
    t = np.asarray(seconds, dtype=float)
    u = np.asarray(cpu_per_wall, dtype=float)
    stalled = stalled_mask(u, threads, policy)
    keep = ~stalled if (~stalled).sum() >= 3 else np.ones_like(stalled)
    return SideStats(float(np.median(t[keep])), spread_pct(t[keep]), float(np.median(u[keep])),
                     int(t.size), int(stalled.sum()))


def noise_reasons(sides: List[SideStats], policy: NoisePolicy) -> List[str]:
    """Why a case is noisy ([] when it is not): a spread past the threshold, or too many
    stalled samples on either side."""
    reasons = []
    worst = max(s.spread_pct for s in sides)
    if not worst <= policy.spread_pct:          # also catches nan
        reasons.append(f"spread {worst:.1f}% > {policy.spread_pct:g}%")
    stalled, total = sum(s.stalled for s in sides), sum(s.samples for s in sides)
    if total and stalled / total > policy.max_stalled_fraction:
        reasons.append(f"{stalled}/{total} samples stalled")
    return reasons
