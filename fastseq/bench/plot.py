"""The picture of a bench run (from its JSON record): ratio per case grouped by op and mode
with the 1.0 line, fastseq's and torch's share of the machine's GEMM peak, and the scaling
curves (time against T, B, H for the recurrent layers, against L for attention)."""
import os
from typing import Dict, List, Tuple

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # files only; no display needed (or wanted) on a benchmark box
import matplotlib.pyplot as plt  # noqa: E402

# The dimensions a scaling curve may run along, per op.
SCALING_DIMS = {"lstm": ("T", "B", "H"), "gru": ("T", "B", "H"), "rnn": ("T", "B", "H"),
                "lstm_cell": ("B", "H"), "attention": ("L",), "mha": ("L",), "encoder_layer": ("L",)}
MIN_POINTS = 3


def scaling_series(cases: List[Dict]) -> Dict[Tuple[str, str, str], List[Dict]]:
    """(op, mode, dim) -> cases that differ only in dim, sorted along it: for each, the
    longest such run among the cases (ties: the first met). Runs under MIN_POINTS are left out."""
    runs: Dict[Tuple, List[Dict]] = {}
    for c in cases:
        for dim in SCALING_DIMS.get(c["op"], ()):
            if dim in c["dims"]:
                rest = tuple(sorted((k, v) for k, v in c["dims"].items() if k != dim))
                runs.setdefault((c["op"], c["mode"], dim, rest), []).append(c)
    best: Dict[Tuple[str, str, str], List[Dict]] = {}
    for (op, mode, dim, _), run in runs.items():
        if len({c["dims"][dim] for c in run}) >= MIN_POINTS and len(run) > len(best.get((op, mode, dim), [])):
            best[(op, mode, dim)] = sorted(run, key=lambda c: c["dims"][dim])
    return best


def _bars(ax_ratio, ax_share, cases):
    groups: Dict[Tuple[str, str], List[Dict]] = {}
    for c in cases:
        groups.setdefault((c["op"], c["mode"]), []).append(c)
    x, ticks, labels = 0, [], []
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, ((op, mode), group) in enumerate(groups.items()):
        xs = list(range(x, x + len(group)))
        color = colors[i % len(colors)]
        ax_ratio.bar(xs, [c["ratio"] for c in group], color=color,
                     hatch=["//" if c["noisy"] else "" for c in group], edgecolor="white")
        shares = [100 * (c["peak_share"] or 0) for c in group]
        ax_share.bar(xs, shares, color=color)
        ax_share.scatter(xs, [100 * (c["torch_peak_share"] or 0) for c in group], color="black", marker="_",
                         s=60, zorder=3, label="torch" if i == 0 else None)
        ticks.append(x + (len(group) - 1) / 2)
        labels.append(f"{op}\n{mode}")
        x += len(group) + 1
    ax_ratio.axhline(1.0, color="black", linewidth=1)
    ax_ratio.set_ylabel("torch time / fastseq time")
    ax_ratio.set_title("ratio per case (above 1: fastseq faster; hatched: noisy)")
    ax_share.set_ylabel("% of float32 GEMM peak")
    ax_share.set_title("fastseq's share of the machine's GEMM rate (bars; torch: black ticks)")
    ax_share.legend(loc="upper right")
    for ax in (ax_ratio, ax_share):
        ax.set_xticks(ticks, labels, fontsize=8)


def _scaling(ax, key, run):
    op, mode, dim = key
    xs = [c["dims"][dim] for c in run]
    ax.plot(xs, [c["torch_ms"] for c in run], "o-", label="torch")
    ax.plot(xs, [c["fastseq_ms"] for c in run], "s-", label="fastseq")
    fixed = " ".join(f"{k}={v}" for k, v in run[0]["dims"].items() if k != dim)
    ax.set(xscale="log", yscale="log", xlabel=dim, ylabel="ms per call", title=f"{op} {mode}: {fixed}")
    # Ticks at the measured sizes; log axes' minor labels would crowd them.
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)


def plot_record(record: Dict, path: str):
    cases = record["cases"]
    series = scaling_series(cases)
    cols = 3
    rows = (len(series) + cols - 1) // cols
    fig = plt.figure(figsize=(max(10, 0.12 * len(cases) + 4), 7 + 3.2 * rows), layout="constrained")
    grid = fig.add_gridspec(2 + rows, cols, height_ratios=[3, 2] + [2.6] * rows)
    _bars(fig.add_subplot(grid[0, :]), fig.add_subplot(grid[1, :]), cases)
    for i, (key, run) in enumerate(sorted(series.items())):
        _scaling(fig.add_subplot(grid[2 + i // cols, i % cols]), key, run)
    m = record["machine"]
    fig.suptitle(f"fastseq bench ({record['suite']}): {m['device_name']}, {m['threads']} threads, "
                 f"load {m['load_avg']}, {m['date']}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
