"""`fastseq bench`: the noise statistics, the JSON record of a tiny real run, the compare
table, the plot, the README filler and the flag checks (no timing assertions)."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastseq.bench import flops, readme, report
from fastseq.bench.cli import collect_cases
from fastseq.bench.harness import BenchCase, RerunBudget, RunSettings, run_case
from fastseq.bench.memory import _without_kineto_lines, peak_memory_mb
from fastseq.bench.plot import scaling_series
from fastseq.bench.stats import NoisePolicy, noise_reasons, side_stats, spread_pct, stalled_mask
from fastseq.bench.timing import measure
from fastseq.cli import main

ROOT = Path(__file__).resolve().parents[1]
POLICY = NoisePolicy()
CASE_KEYS = {"op", "mode", "case", "torch_ms", "fastseq_ms", "ratio", "torch_spread", "fastseq_spread",
             "gflops", "noisy", "peak_share", "samples", "cpu_per_wall"}


# ---- statistics on synthetic samples ----

def test_spread_is_iqr_percent_of_median():
    assert spread_pct([1.0, 1.0, 1.0, 1.0]) == 0.0
    assert spread_pct([9.0, 10.0, 11.0]) == pytest.approx(10.0)   # IQR 1 on median 10


def test_steady_samples_are_clean():
    side = side_stats([1.00, 1.01, 0.99, 1.00, 1.02, 1.00, 0.99], [0.97] * 7, 1, POLICY)
    assert side.stalled == 0 and side.spread_pct < 2
    assert noise_reasons([side, side], POLICY) == []


def test_spread_past_threshold_is_noisy():
    clean = side_stats([1.0] * 7, [0.97] * 7, 1, POLICY)
    spread = side_stats([1.0, 1.3, 0.8, 1.1, 1.4, 0.9, 1.2], [0.97] * 7, 1, POLICY)
    reasons = noise_reasons([clean, spread], POLICY)
    assert len(reasons) == 1 and reasons[0].startswith("spread")


def test_stalled_samples_from_cpu_and_wall():
    # Sample 2 got 40 % of its wall time on the CPU, the others all of it.
    mask = stalled_mask([0.98, 0.97, 0.40, 0.99], 1, POLICY)
    assert mask.tolist() == [False, False, True, False]
    # A serial op on 2 threads keeps one idle (0.5 of wall x threads): not a stall.
    assert not stalled_mask([0.50, 0.49, 0.51], 2, POLICY).any()
    # Every sample below half a core: other jobs held the CPU the whole time.
    assert stalled_mask([0.3, 0.3, 0.3], 1, POLICY).all()


def test_stalled_samples_leave_the_median_and_make_the_case_noisy():
    times = [1.0, 1.0, 3.0, 1.0, 3.0, 1.0, 1.0]
    util = [0.98, 0.98, 0.30, 0.98, 0.30, 0.98, 0.98]
    side = side_stats(times, util, 1, POLICY)
    assert side.stalled == 2 and side.median_s == 1.0 and side.spread_pct == 0.0
    clean = side_stats([1.0] * 7, [0.98] * 7, 1, POLICY)
    assert noise_reasons([side, side], POLICY) == ["4/14 samples stalled"]
    assert noise_reasons([side, clean], POLICY) == []   # 2 of 14 is within the allowance


def test_measure_reports_cpu_per_wall():
    seconds, cpu_per_wall = measure(lambda: sum(range(20000)), torch.device("cpu"), 3, 1)
    assert seconds > 0 and 0 < cpu_per_wall <= 1.5


def _sleepy_case():
    # Sleeps of 1 or 6 ms in turn: a wide spread, and CPU time far below wall time.
    def setup():
        calls = []

        def fn():
            calls.append(None)
            time.sleep(0.001 if len(calls) % 2 else 0.006)
            return torch.zeros(1)
        return fn, fn
    return BenchCase("sleep", "synthetic", "infer", "itself", setup)


@pytest.mark.parametrize("budget_s,rounds", [(0.0, 1), (60.0, 3)])
def test_noisy_case_reruns_within_budget(budget_s, rounds):
    budget = RerunBudget(budget_s)
    settings = RunSettings(repeats=3, min_sample_s=1e-6, max_rounds=3, budget=budget)
    result = run_case(_sleepy_case(), torch.device("cpu"), settings)
    assert result.noisy and result.rounds == rounds and result.ref.samples == 3 * rounds
    assert budget.seconds <= budget_s


# ---- flop counts ----

def test_flop_formulas():
    assert flops.recurrent("lstm", 10, 2, 3, 5, 1, "infer") == 2 * 10 * 2 * 4 * 5 * (3 + 5)
    assert flops.recurrent("gru", 10, 2, 3, 5, 2, "train") == 3 * 2 * 10 * 2 * 3 * 5 * ((3 + 5) + (5 + 5))
    assert flops.attention(1, 2, 8, 8, 4, True, "infer") == 4 * 2 * 8 * 8 * 4 / 2
    assert flops.attention(1, 2, 8, 8, 4, False, "train") == 3.5 * 4 * 2 * 8 * 8 * 4


def test_every_case_has_flops_and_dims():
    for suite in ("small", "full", "scaling"):
        for case in collect_cases(suite, torch.device("cpu"), []):
            assert case.flops and case.flops > 0 and case.dims, (suite, case.op, case.label)


def test_full_suite_covers_each_attention_feature():
    cases = collect_cases("full", torch.device("cpu"), ["attention", "mha", "gpt_step"])
    att = [c for c in cases if c.op == "attention"]
    has = lambda pred: any(pred(c.dims, c.label) for c in att)
    assert has(lambda d, _: d.get("Hk", d["H"]) < d["H"] and d["L"] > 1)        # GQA
    assert has(lambda d, _: d["D"] == 80) and has(lambda d, _: d["D"] == 96)
    assert has(lambda d, _: d["L"] & (d["L"] - 1) != 0 and d["L"] > 1)           # not a power of two
    assert has(lambda d, _: d.get("S", d["L"]) != d["L"] and d["L"] > 1)       # cross attention
    assert has(lambda d, label: "kpm (B,1,1,S)" in label) and has(lambda d, label: "float mask" in label)
    for S in (512, 2048, 8192):
        for gqa in (False, True):  # decoding, with and without GQA
            assert has(lambda d, _: d["L"] == 1 and d.get("S") == S and (d.get("Hk", d["H"]) < d["H"]) == gqa)
    assert any(c.op == "mha" and "cross" in c.label for c in cases)
    steps = [c for c in cases if c.op == "gpt_step"]
    assert {c.dims["compiled"] for c in steps} == {0, 1}
    for c in steps:  # what is compared, and what runs torch's own module on both sides
        assert "GPT" in c.reference and "torch's on both sides" in c.note
        assert ("compile" in c.reference) == bool(c.dims["compiled"])


def test_new_attention_cases_run_and_agree():
    # One repeat of the cheapest feature cases: they build, run on both sides and agree.
    cases = [c for c in collect_cases("full", torch.device("cpu"), ["attention"])
             if c.label in ("B=8 H=8/2 L=1 S=2048 D=64 decode +kpm (B,1,1,S)",
                            "B=4 H=8 L=S=200 D=64 full +bool mask")]
    assert len(cases) == 3
    settings = RunSettings(repeats=1, min_sample_s=1e-4, max_rounds=1)
    for case in cases:
        result = run_case(case, torch.device("cpu"), settings)
        assert result.max_abs_err < 1e-4, (case.label, result.max_abs_err)


# ---- a tiny real run: JSON, Markdown, plot, compare ----

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    args = ["bench", "--ops", "lstm_cell", "--threads", "1", "--repeats", "3", "--min-sample-ms", "2",
            "--json", str(out / "run.json"), "--out", str(out / "run.md"), "--plot", str(out / "run.png")]
    assert main(args) == 0
    return out


def test_json_schema(tiny_run):
    record = json.loads((tiny_run / "run.json").read_text())
    machine = record["machine"]
    for key in ("gemm_peak_gflops", "gemm_bf16_gflops", "cpu", "isa", "threads", "load_avg", "torch", "blas"):
        assert key in machine
    assert machine["gemm_peak_gflops"] > 0 and machine["threads"] == 1
    assert len(record["cases"]) == 2
    for case in record["cases"]:
        assert CASE_KEYS <= set(case)
        assert case["op"] == "lstm_cell" and case["samples"] >= 3
        assert case["ratio"] == pytest.approx(case["torch_ms"] / case["fastseq_ms"])
        assert case["peak_share"] == pytest.approx(case["gflops"] / machine["gemm_peak_gflops"])
        assert isinstance(case["noisy"], bool)


def test_markdown_and_plot_written(tiny_run):
    text = (tiny_run / "run.md").read_text()
    assert "GEMM peak" in text and "noisy:" in text and "lstm_cell" in text
    assert (tiny_run / "run.png").read_bytes()[:4] == b"\x89PNG"


def test_strict_exits_1_when_cases_stay_noisy(tmp_path):
    # A 0 % threshold leaves every case noisy (no real spread is exactly 0).
    args = ["bench", "--ops", "lstm_cell", "--threads", "1", "--repeats", "3", "--min-sample-ms", "2",
            "--noise-threshold", "0", "--max-rounds", "1", "--json", str(tmp_path / "run.json")]
    assert main(args + ["--strict"]) == 1
    assert all(c["noisy"] for c in json.loads((tmp_path / "run.json").read_text())["cases"])


def test_compare_table(tiny_run, tmp_path, capsys):
    old = json.loads((tiny_run / "run.json").read_text())
    new = json.loads(json.dumps(old))
    new["cases"][0]["fastseq_ms"] = old["cases"][0]["fastseq_ms"] / 2   # twice as fast now
    del new["cases"][1]
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    assert main(["bench", "--compare", str(tmp_path / "old.json"), str(tmp_path / "new.json")]) == 0
    out = capsys.readouterr().out
    assert "-50.0%" in out and "gone" in out and "geomean 2.00x over 1 common cases" in out


def test_compare_rejects_other_json(tmp_path, capsys):
    (tmp_path / "x.json").write_text("{}")
    assert main(["bench", "--compare", str(tmp_path / "x.json"), str(tmp_path / "x.json")]) == 2
    assert "not a `fastseq bench --json` file" in capsys.readouterr().err


def test_readme_filled_between_markers(tiny_run, tmp_path):
    record = report.read_json(tiny_run / "run.json")
    page = tmp_path / "README.md"
    page.write_text(f"intro\n{readme.BEGIN}\nold\n{readme.END}\nrest\n")
    readme.fill(page, readme.measured_section(record, "t.md", [("plot", "p.png")], "make bench-full"))
    text = page.read_text()
    assert "old" not in text and text.startswith("intro\n") and text.endswith(f"{readme.END}\nrest\n")
    assert record["machine"]["cpu"] in text and "make bench-full" in text and "![plot](p.png)" in text
    page.write_text("no markers here\n")
    with pytest.raises(ValueError, match="markers"):
        readme.fill(page, "x")


def test_scaling_series_from_cases_varying_one_dim():
    def case(T, B, H=128):
        return {"op": "lstm", "mode": "infer", "dims": {"T": T, "B": B, "H": H}, "torch_ms": T, "fastseq_ms": T}
    cases = [case(T, 16) for T in (100, 25, 50)] + [case(25, 8), case(50, 4)]
    series = scaling_series(cases)
    assert list(series) == [("lstm", "infer", "T")]
    assert [c["dims"]["T"] for c in series[("lstm", "infer", "T")]] == [25, 50, 100]


# ---- peak memory without kineto's lines ----

def test_peak_memory_keeps_stderr_clean(capfd):
    mb = peak_memory_mb(lambda: torch.ones(1024, 1024) * 2, torch.device("cpu"))
    assert mb >= 4.0          # two 4 MiB tensors live at once
    assert "profiler_st" not in capfd.readouterr().err


def test_stderr_lines_other_than_kineto_pass_through(capfd):
    import os
    with _without_kineto_lines():
        os.write(2, b"USDT: SyncActivityProfilerHandler.cpp:52] profiler_start\nreal warning\n")
    assert capfd.readouterr().err == "real warning\n"


# ---- bad input: one line, exit 2, no traceback ----

@pytest.mark.parametrize("flags,needle", [
    (["--repeats", "0"], "--repeats"), (["--repeats", "-3"], "--repeats"), (["--threads", "-1"], "--threads"),
    (["--repeats", "many"], "--repeats"), (["--ops", "nosuchop"], "valid ops: lstm, lstm_cell"),
])
def test_bad_flags_exit_2_with_one_line(flags, needle):
    proc = subprocess.run([sys.executable, "-m", "fastseq", "bench", *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr
    assert proc.stdout == ""
