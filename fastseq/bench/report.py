"""What a bench run prints and writes: the case table, the per-op summary, the JSON record,
the Markdown file, and the before/after table of two JSON records."""
import json
import math
import os
from typing import Dict, List, Tuple

import numpy as np

SCHEMA = 1


def geomean(values):
    values = [v for v in values if v and v > 0 and math.isfinite(v)]
    return float(np.exp(np.mean(np.log(values)))) if values else float("nan")


def case_record(r, machine) -> Dict:
    """One entry of the JSON `cases` list (times in ms, spreads in % of the median)."""
    # bfloat16 cases against the bfloat16 GEMM rate (torch.mm bf16 at 1024^2: AMX where present).
    peak = machine.get("gemm_bf16_gflops") if r.case.op.endswith("_bf16") else machine["gemm_peak_gflops"]
    fast_gflops, ref_gflops = r.gflops(r.fast_ms), r.gflops(r.ref_ms)
    return {
        "op": r.case.op, "mode": r.case.mode, "case": r.case.label, "reference": r.case.reference,
        "dims": r.case.dims, "torch_ms": r.ref_ms, "fastseq_ms": r.fast_ms, "ratio": r.ratio,
        "torch_spread": r.ref.spread_pct, "fastseq_spread": r.fast.spread_pct,
        "flops": r.case.flops, "gflops": fast_gflops, "torch_gflops": ref_gflops,
        "peak_share": fast_gflops / peak if fast_gflops and peak else None,
        "torch_peak_share": ref_gflops / peak if ref_gflops and peak else None,
        "samples": r.ref.samples, "rounds": r.rounds,
        "cpu_per_wall": {"torch": r.ref.cpu_per_wall, "fastseq": r.fast.cpu_per_wall},
        "stalled": {"torch": r.ref.stalled, "fastseq": r.fast.stalled},
        "noisy": r.noisy, "noise": r.noise, "max_abs_err": r.max_abs_err,
        "torch_peak_mb": r.ref_peak_mb, "fastseq_peak_mb": r.fast_peak_mb, "note": r.case.note,
    }


def run_record(machine, settings, suite, command, cases) -> Dict:
    return {"schema": SCHEMA, "suite": suite, "command": command, "machine": machine,
            "noise_policy": dict(vars(settings.policy), repeats=settings.repeats,
                                 max_rounds=settings.max_rounds),
            "cases": cases}


def write_json(record, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=1)


def read_json(path):
    with open(path) as f:
        record = json.load(f)
    if not isinstance(record, dict) or "cases" not in record or "machine" not in record:
        raise ValueError(f"{path} is not a `fastseq bench --json` file (no machine / cases)")
    return record


def _fmt(value, spec, missing="-"):
    return missing if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def markdown_table(head: List[str], rows: List[List[str]]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def format_table(cases: List[Dict]) -> str:
    has_mem = any(c["torch_peak_mb"] is not None for c in cases)
    head = ["op", "mode", "case", "reference", "torch ms ±IQR%", "fastseq ms ±IQR%", "ratio",
            "fastseq GFLOP/s", "% of peak", "CPU/wall t/f", "max abs err"]
    head += ["torch MB", "fastseq MB"] if has_mem else []
    head += ["noisy", "note"]
    rows = []
    for c in cases:
        row = [c["op"], c["mode"], c["case"], c["reference"],
               f"{c['torch_ms']:.3f} ±{c['torch_spread']:.1f}", f"{c['fastseq_ms']:.3f} ±{c['fastseq_spread']:.1f}",
               f"{c['ratio']:.2f}x", _fmt(c["gflops"], ".1f"), _fmt(c["peak_share"] and 100 * c["peak_share"], ".0f"),
               f"{c['cpu_per_wall']['torch']:.2f}/{c['cpu_per_wall']['fastseq']:.2f}", f"{c['max_abs_err']:.1e}"]
        if has_mem:
            row += [_fmt(c["torch_peak_mb"], ".1f"), _fmt(c["fastseq_peak_mb"], ".1f")]
        row += ["; ".join(c["noise"]) if c["noisy"] else "", c["note"]]
        rows.append(row)
    return markdown_table(head, rows)


def _groups(cases) -> Dict[Tuple[str, str, str], List[Dict]]:
    groups: Dict[Tuple[str, str, str], List[Dict]] = {}
    for c in cases:
        groups.setdefault((c["op"], c["reference"], c["mode"]), []).append(c)
    return dict(sorted(groups.items()))


def format_summary(cases: List[Dict]) -> str:
    return markdown_table(SUMMARY_HEAD, summary_rows(cases))


def noisy_line(cases: List[Dict]) -> str:
    n = sum(c["noisy"] for c in cases)
    return f"noisy: {n} of {len(cases)} cases stayed noisy after re-runs" + (
        " (their ratios are not to be trusted)" if n else "")


def summary_rows(cases: List[Dict]) -> List[List[str]]:
    """One row per (op, reference, mode): geomean / min / max ratio, median share of peak."""
    rows = []
    for (op, ref, mode), group in _groups(cases).items():
        ratios = [c["ratio"] for c in group]
        shares = [c["peak_share"] for c in group if c["peak_share"] is not None]
        rows.append([op, mode, ref, f"{geomean(ratios):.2f}x", f"{min(ratios):.2f}x", f"{max(ratios):.2f}x",
                     f"{100 * float(np.median(shares)):.0f}%" if shares else "-",
                     f"{sum(c['noisy'] for c in group)}/{len(group)}"])
    return rows


SUMMARY_HEAD = ["op", "mode", "vs", "ratio geomean", "min", "max", "fastseq % of GEMM peak", "noisy"]


def format_compare(old: Dict, new: Dict) -> str:
    """Before/after table of fastseq's time per case (change < 0 = faster now)."""
    key = lambda c: (c["op"], c["mode"], c["case"])
    before = {key(c): c for c in old["cases"]}
    rows, changes = [], []
    for c in new["cases"]:
        o = before.pop(key(c), None)
        if o is None:
            rows.append([c["op"], c["mode"], c["case"], "-", f"{c['fastseq_ms']:.3f}", "new", "-",
                         f"{c['ratio']:.2f}x", "yes" if c["noisy"] else ""])
            continue
        change = (c["fastseq_ms"] / o["fastseq_ms"] - 1) * 100
        changes.append(o["fastseq_ms"] / c["fastseq_ms"])
        rows.append([c["op"], c["mode"], c["case"], f"{o['fastseq_ms']:.3f}", f"{c['fastseq_ms']:.3f}",
                     f"{change:+.1f}%", f"{o['ratio']:.2f}x", f"{c['ratio']:.2f}x",
                     "yes" if (c["noisy"] or o["noisy"]) else ""])
    rows += [[c["op"], c["mode"], c["case"], f"{c['fastseq_ms']:.3f}", "-", "gone", f"{c['ratio']:.2f}x", "-",
              "yes" if c["noisy"] else ""] for c in before.values()]
    table = markdown_table(["op", "mode", "case", "old fastseq ms", "new fastseq ms", "change",
                            "old ratio", "new ratio", "noisy"], rows)
    om, nm = old["machine"], new["machine"]
    lines = [f"old: {om['cpu']}, {om['threads']} threads, load {om['load_avg']}, {om['date']}",
             f"new: {nm['cpu']}, {nm['threads']} threads, load {nm['load_avg']}, {nm['date']}"]
    if (om["cpu"], om["threads"]) != (nm["cpu"], nm["threads"]):
        lines.append("WARNING: the two runs were made on different machines or thread counts")
    lines += ["", table, "", f"fastseq speed-up new vs old: geomean {geomean(changes):.2f}x "
              f"over {len(changes)} common cases"]
    return "\n".join(lines)


def markdown_file(record, header_lines: List[str]) -> str:
    cases = record["cases"]
    return (f"# fastseq bench ({record['suite']})\n\n"
            f"Command: `{record['command']}`\n\n```\n" + "\n".join(header_lines) + "\n```\n\n"
            f"{format_summary(cases)}\n\n{noisy_line(cases)}\n\n{format_table(cases)}\n")
