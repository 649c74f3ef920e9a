"""`fastseq bench`: runs the registered suites, prints the machine, one side-by-side table
and the noise verdict; writes Markdown, JSON and plots; compares two JSON runs."""
import argparse
import importlib
import os
import sys

import torch
from tqdm import tqdm

from . import machine, report
from .harness import RerunBudget, RunSettings, run_case
from .stats import NoisePolicy

# Each suite module exposes OPS (the op names its cases carry) and
# cases(suite: str, device: torch.device) -> list[BenchCase].
SUITE_MODULES = [
    "fastseq.bench.lstm",
    "fastseq.bench.gru_rnn",
    "fastseq.bench.attention",
    "fastseq.bench.mha",
    "fastseq.bench.models",
]
SUITES = ["small", "full", "scaling"]


def valid_ops():
    return [op for name in SUITE_MODULES for op in importlib.import_module(name).OPS]


def _number(kind, low, what):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not value >= low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value
    return parse


def _ops(text):
    ops = [op for op in text.split(",") if op]
    known = valid_ops()
    unknown = [op for op in ops if op not in known]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown op {', '.join(unknown)}; valid ops: {', '.join(known)}")
    return ops


def _command(args):
    """The command line that reproduces this run's measurements."""
    parts = ["fastseq bench", f"--suite {args.suite}", f"--device {args.device}",
             f"--repeats {args.repeats}", f"--threads {torch.get_num_threads()}"]
    if args.ops:
        parts.append(f"--ops {','.join(args.ops)}")
    return " ".join(parts)


def collect_cases(suite, device, ops):
    cases = []
    for name in SUITE_MODULES:
        cases += [c for c in importlib.import_module(name).cases(suite, device) if not ops or c.op in ops]
    return cases


def run(args):
    if args.compare:
        print(report.format_compare(*(report.read_json(p) for p in args.compare)))
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cases = collect_cases(args.suite, device, args.ops)
    if not cases:
        raise ValueError(f"suite {args.suite!r} has no cases for --ops {','.join(args.ops)}")
    threads = torch.get_num_threads()
    info = machine.describe(device, threads)
    header = machine.header_lines(info)
    print("\n".join(header), flush=True)
    print(f"suite: {args.suite}, {len(cases)} cases; ratio = torch time / fastseq time (median of "
          f"{args.repeats} interleaved samples a round, up to {args.max_rounds} rounds when noisy)", flush=True)
    settings = RunSettings(repeats=args.repeats, min_sample_s=args.min_sample_ms / 1e3,
                           max_rounds=args.max_rounds, policy=NoisePolicy(spread_pct=args.noise_threshold),
                           threads=1 if device.type == "cuda" else threads,
                           budget=RerunBudget(args.rerun_budget))
    # The bar lives on stderr and is cleared (leave=False) before the table prints.
    with tqdm(total=len(cases), desc="bench", unit="case", file=sys.stderr, leave=False) as bar:
        records = []
        for case in cases:
            bar.set_postfix_str(f"{case.op} {case.mode}", refresh=False)
            records.append(report.case_record(run_case(case, device, settings), info))
            bar.update()
    record = report.run_record(info, settings, args.suite, _command(args), records)
    print(report.format_table(records))
    print()
    print(report.format_summary(records))
    print(report.noisy_line(records))
    if args.out:
        _write_text(args.out, report.markdown_file(record, header))
    if args.json:
        report.write_json(record, args.json)
    if args.plot:
        from .plot import plot_record  # matplotlib loads only when a plot is asked for

        plot_record(record, args.plot)
    for path in (args.out, args.json, args.plot):
        if path:
            print(f"wrote {path}")
    noisy = sum(c["noisy"] for c in records)
    return 1 if args.strict and noisy else 0


def _write_text(path, text):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


class _HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default unless it is empty (an unset path, all ops, a switch)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default in ("", []):
            return action.help
        return super()._get_help_string(action)


def _one_line_error(parser):
    # A bad flag reads as one line naming it (argparse would print the whole usage first).
    def error(message):
        parser.exit(2, f"{parser.prog}: error: {message}\n")
    return error


def register(subparsers, train_subparsers):
    p = subparsers.add_parser("bench", help="time fastseq against PyTorch side by side",
                              formatter_class=_HelpWithDefaults)
    p.error = _one_line_error(p)
    p.add_argument("--suite", choices=SUITES, default="small",
                   help="small: about a minute on 2 cores; full: the published grids; "
                        "scaling: one dimension varied at a time, for the scaling curves")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cuda: CUDA-event timing and a cuBLAS GEMM probe for the peak")
    p.add_argument("--ops", type=_ops, default=[], metavar="OP[,OP...]", help="comma-separated subset, e.g. lstm,gru (default: all)")
    p.add_argument("--repeats", type=_number(int, 1, "an integer >= 1"), default=7, metavar="N",
                   help="interleaved samples per side and round")
    p.add_argument("--threads", type=_number(int, 0, "an integer >= 0"), default=0, metavar="N",
                   help="torch threads (0 = torch's default)")
    p.add_argument("--min-sample-ms", type=_number(float, 1e-3, "a number of ms >= 0.001"), default=20.0, metavar="MS",
                   help="each sample repeats the call for at least this long")
    p.add_argument("--noise-threshold", type=_number(float, 0.0, "a percentage >= 0"), default=NoisePolicy.spread_pct, metavar="PCT",
                   help="a case is noisy when either side's IQR exceeds this %% of its median")
    p.add_argument("--max-rounds", type=_number(int, 1, "an integer >= 1"), default=3, metavar="N",
                   help="rounds of samples a noisy case may get in all")
    p.add_argument("--rerun-budget", type=_number(float, 0.0, "seconds >= 0"), default=30.0, metavar="S",
                   help="seconds that the extra rounds of noisy cases may take, over the whole run")
    p.add_argument("--strict", action="store_true", help="exit 1 when any case stays noisy")
    p.add_argument("--out", default="", metavar="PATH.md", help="also write the tables as Markdown to this path")
    p.add_argument("--json", default="", metavar="PATH.json", help="also write machine and every case as JSON to this path")
    p.add_argument("--plot", default="", metavar="PATH.png", help="also draw ratios, share of peak and scaling curves to this PNG")
    p.add_argument("--compare", nargs=2, metavar=("OLD.json", "NEW.json"),
                   help="print the before/after table of two --json runs instead of running")
    p.set_defaults(func=run)
