"""Seeds x algorithms on CartPole-v1 with each algorithm's DEFAULT settings: trains, then
evaluates the best checkpoint greedily on 100 fresh episodes; writes a markdown table.

    python benchmarks/rl_cartpole.py --algos dqn,reinforce,a2c --seeds 0,1,2,3,4 \
        --out benchmarks/results/rl_cartpole.md
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fastseq.rl import A2CConfig, DQNConfig, ReinforceConfig, train_a2c, train_dqn, train_reinforce  # noqa: E402
from fastseq.rl.evaluate import evaluate_checkpoint  # noqa: E402

ALGOS = {"dqn": (train_dqn, DQNConfig), "reinforce": (train_reinforce, ReinforceConfig),
         "a2c": (train_a2c, A2CConfig)}
TARGET = 475.0


def run_one(algo, seed, env_id, run_dir, full_budget=False):
    train_fn, config_cls = ALGOS[algo]
    config = config_cls(stop_when_solved=not full_budget)
    summary = train_fn(env_id, config, seed=seed, out_dir=run_dir, progress=False)
    start = time.perf_counter()
    returns, _ = evaluate_checkpoint(summary["best_path"], episodes=100)
    last, _ = evaluate_checkpoint(summary["last_path"], episodes=100)
    return {"algo": algo, "seed": seed, "budget": config.total_steps, "steps": summary["steps"],
            "best_step": summary["best_step"], "train_wall_s": round(summary["wall_s"], 1),
            "eval_wall_s": round(time.perf_counter() - start, 1),
            "mean_return": float(returns.mean()), "min_return": float(returns.min()),
            "last_mean_return": float(last.mean()),
            "loadavg": os.getloadavg()[0]}


def table(rows):
    lines = ["| algorithm | seed | step budget | env steps used | best checkpoint step | "
             "best.pt mean return (100 eps) | min | last.pt mean return | train wall time (s) | solved (>= 475) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['algo']} | {r['seed']} | {r['budget']} | {r['steps']} | {r['best_step']} | "
                     f"{r['mean_return']:.1f} | {r['min_return']:.0f} | {r['last_mean_return']:.1f} | "
                     f"{r['train_wall_s']:.1f} | {'yes' if r['mean_return'] >= TARGET else 'no'} |")
    summary = []
    for algo in dict.fromkeys(r["algo"] for r in rows):
        mine = [r for r in rows if r["algo"] == algo]
        solved = sum(r["mean_return"] >= TARGET for r in mine)
        summary.append(f"- {algo}: {solved}/{len(mine)} seeds reach a mean return >= {TARGET:.0f}; "
                       f"max train wall time {max(r['train_wall_s'] for r in mine):.1f} s")
    return "\n".join(lines), "\n".join(summary)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", default="dqn,reinforce,a2c")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--out", default="benchmarks/results/rl_cartpole.md")
    parser.add_argument("--full-budget", action="store_true",
                        help="no early stop: train the whole step budget (stop_when_solved=False)")
    parser.add_argument("--runs-dir", default=None, help="keep run directories here (default: a temp dir)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs_dir = args.runs_dir or tempfile.mkdtemp(prefix="fastseq-rl-bench-")
    rows = []
    for algo in args.algos.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            row = run_one(algo, seed, args.env, os.path.join(runs_dir, f"{algo}-seed{seed}"), args.full_budget)
            rows.append(row)
            print(json.dumps(row), flush=True)
    body, summary = table(rows)
    loads = [r["loadavg"] for r in rows]
    mode = ("whole step budget, no early stop (`--full-budget`)" if args.full_budget
            else "default settings (early stop once solved)")
    header = (f"# RL on {args.env}: {mode}, seeds {args.seeds}\n\n"
              f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"torch {torch.__version__} with 1 thread, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
              f"1-minute load average {min(loads):.1f}-{max(loads):.1f} during the runs (the cores were shared "
              f"with other jobs, so wall times are pessimistic).\n\n"
              "Protocol: each run trains with the algorithm's default config and step budget. Every "
              "`eval_every` steps the greedy policy plays 10 episodes; a score at or above 475 is re-checked on "
              "100 episodes, and the best-scoring network is kept as best.pt. Training stops early once the "
              "100-episode check reaches 475 (`stop_when_solved`, unless `--full-budget`). The reported return is a separate greedy "
              "evaluation of best.pt on 100 fresh episodes (seeds 10^6..10^6+99, never used during training or "
              "checkpoint selection); last.pt is the network at the end of training, evaluated the same way. Wall time covers training including the periodic evaluations.\n\n")
    with open(args.out, "w") as f:
        f.write(header + body + "\n\n" + summary + "\n")
    print(body)
    print(summary)


if __name__ == "__main__":
    main()
