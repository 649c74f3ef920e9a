"""`fastseq bench`: runs the registered suites and prints one side-by-side table."""
import importlib
import os
import platform
import sys
import time

import torch

from .harness import format_summary, format_table, run_case

# Each suite module exposes cases(suite: str, device: torch.device) -> list[BenchCase].
SUITE_MODULES = [
    "fastseq.bench.lstm",
    "fastseq.bench.gru_rnn",
    "fastseq.bench.attention",
    "fastseq.bench.mha",
    "fastseq.bench.models",
]


def machine_header(device):
    from ..info import cpu_isa

    isa, model = cpu_isa()
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU {model} ({isa})"
    return (f"device: {device} = {dev}\n"
            f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
            f"python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M')}")


def run(args):
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    wanted = set(args.ops.split(",")) if args.ops else None
    cases = []
    for name in SUITE_MODULES:
        mod = importlib.import_module(name)
        cases += [c for c in mod.cases(args.suite, device) if wanted is None or c.op in wanted]
    if not cases:
        raise ValueError(f"no benchmark cases selected (ops={args.ops!r})")
    header = machine_header(device)
    print(header, flush=True)
    print(f"suite: {args.suite}, {len(cases)} cases; ratio = torch time / fastseq time "
          f"(median of {args.repeats} interleaved samples)", flush=True)
    results = []
    from tqdm import tqdm
    progress = tqdm(cases, desc="bench", unit="case", file=sys.stderr, leave=False)
    for case in progress:
        results.append(run_case(case, device, repeats=args.repeats))
    table, summary = format_table(results), format_summary(results)
    print(table)
    print()
    print(summary)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(f"# fastseq bench ({args.suite})\n\n```\n{header}\n```\n\n{table}\n\n```\n{summary}\n```\n")
        print(f"\nwrote {args.out}")
    return 0


def register(subparsers, train_subparsers):
    p = subparsers.add_parser("bench", help="time fastseq against PyTorch side by side")
    p.add_argument("--suite", choices=["small", "full"], default="small",
                   help="small: a few minutes on a 2-core CPU; full: the issue-size grids")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--ops", default="", help="comma-separated subset, e.g. lstm,gru")
    p.add_argument("--repeats", type=int, default=7, help="interleaved samples per case")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--out", default="", help="also write the table as Markdown to this path")
    p.set_defaults(func=run)
