"""The training loop shared by the three models: Adam, linear warm-up then cosine decay,
gradient clipping by global norm, periodic validation, resumable checkpoints, progress,
metrics and a loss-curve PNG in the run folder. Under torchrun the same loop trains with
DistributedDataParallel (fastseq.distributed): each rank takes its rows of the global
--batch-size, and the loss, token counts and stop requests are summed over ranks every step."""
import collections
import math
import os
import time

import torch

from .. import distributed, progress
from ..cliargs import apply_threads, threads_in_use
from ..runs import Metrics, RunDir, run_name
from ..signals import Interrupted, graceful_interrupt
from . import checkpoint
from .char_lm import CharLM
from .corpora import load_corpus
from .gpt import GPT
from .seq2seq import Seq2Seq
from .tasks import PairsTask, StreamTask, WindowTask, pair_vocabularies, read_pairs
from .vocab import CharVocab



def lr_lambda(warmup: int, total: int, floor: float = 0.1):
    """Multiplier on the base rate: linear warm-up, then cosine decay to floor * lr."""
    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def new_model(kind, args, vocab):
    if kind == "charlm":
        return CharLM(len(vocab), embed=args.embed, hidden=args.hidden, layers=args.layers,
                      dropout=args.dropout, impl=args.impl)
    if kind == "gpt":
        return GPT(len(vocab), context=args.context, d_model=args.d_model, heads=args.heads,
                   layers=args.layers, dropout=args.dropout, positions=args.positions, impl=args.impl)
    src, tgt = vocab
    return Seq2Seq(len(src), len(tgt), embed=args.embed, hidden=args.hidden,
                   attn_dim=args.attn_dim, impl=args.impl)


def make_task(kind, args, vocab, data, device, dist=None):
    if kind == "seq2seq":
        train, val = read_pairs(data)
        return PairsTask(train, val, *vocab, args.batch_size, device, args.seed, dist)
    text = load_corpus(data)
    if kind == "charlm":
        return StreamTask(text, vocab, args.batch_size, args.seq_len, args.val_fraction, device, dist)
    return WindowTask(text, vocab, args.batch_size, args.context, args.val_fraction, device, args.seed, dist)


def make_vocab(kind, data):
    if kind == "seq2seq":
        return pair_vocabularies(*read_pairs(data))
    return CharVocab.from_text(load_corpus(data))


def format_metrics(metrics):
    return "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def run_folder(kind, args):
    """--out, or runs/<model>-<data>-<impl>-seed<seed>: runs that differ get their own folder."""
    return args.out or os.path.join("runs", run_name(kind, args.data, args.impl, f"seed{args.seed}"))


def train(kind, args):
    """Train (or resume) one model as the CLI arguments say. Returns a dict with the model,
    the final validation metrics and the paths written."""
    from .viz import plot_loss

    dist = distributed.current()
    apply_threads(args)
    device = torch.device(dist.device if dist.enabled else args.device)  # cuda:LOCAL_RANK under torchrun
    dist.local_batch(args.batch_size)  # before anything is written: the flags must split evenly
    torch.manual_seed(args.seed)
    run = RunDir(run_folder(kind, args), resume=args.resume, overwrite=args.overwrite)
    ckpt_path = str(run.file("checkpoint.pt"))
    # Read by rank 0 (the other machines may not see its folder) and sent to every rank.
    state = dist.on_main(checkpoint.load, ckpt_path, expect_kind=kind, flag="--resume") if args.resume else None
    data = state["data"] if state else args.data
    vocab = checkpoint.vocab_from_dict(state["vocab"]) if state else make_vocab(kind, data)
    task = make_task(kind, args, vocab, data, device, dist)
    if state:
        model = checkpoint.build_model(state, impl=args.impl, device=device)
    else:
        model = new_model(kind, args, vocab).to(device)
    # Every rank built the same weights from --seed; DDP also broadcasts rank 0's at wrap.
    trained = dist.wrap(model)
    dist.seed_rank(args.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    warmup = args.warmup if args.warmup is not None else min(100, args.steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup, args.steps))
    step, history = 0, {"train": [], "val": []}
    n_params = sum(p.numel() for p in model.parameters())
    # config.json first: a folder with it is a run --overwrite may replace, even if this one fails.
    run.save_config({"model": kind, **{k: v for k, v in vars(args).items() if k not in ("func", "command")},
                     "data": data, "warmup": warmup, "parameters": n_params})
    metrics_log = Metrics(run, kind, tensorboard=args.tensorboard, resume=args.resume)
    if state:
        step, history = state["step"], state["history"]
        if step >= args.steps:
            raise ValueError(f"--steps: the run is already at step {step}; "
                             f"ask for more than {step} steps to resume it")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        task.load_state_dict(state["task"])
        # After building the model, which draws from it; per rank when as many ranks saved it.
        if not dist.restore_rng(state.get("rank_rng")) and not dist.enabled:
            torch.set_rng_state(state["torch_rng"])
        metrics_log.rewind(step)
        progress.note(f"resuming {run.path} at step {step}: the model's shape and vocabulary "
                      f"come from its checkpoint")

    progress.header(kind, parameters=n_params, data=data, device=device, threads=threads_in_use(),
                    impl=model.config["impl"], steps=f"{step}->{args.steps}", run=run.path,
                    **({"processes": dist.world_size} if dist.enabled else {}))
    loss_png = str(run.file("loss.png"))

    def save_and_plot():
        # Every rank: the task's state is gathered from all of them; rank 0 writes.
        checkpoint.save(ckpt_path, model, vocab, step, history, optimizer, scheduler, task, data)
        if dist.is_main:
            plot_loss(history, loss_png, title=f"{kind} on {os.path.basename(str(data))}")

    metrics = {}
    bar = progress.Progress(args.steps, initial=step, desc=f"train {kind}", enabled=not args.no_progress)
    # Throughput over the last 50 steps: a single slow step (another process grabbing the
    # CPU) then neither dominates nor vanishes as it would in a per-step average.
    recent = collections.deque(maxlen=50)
    smooth_loss, tokens_per_s, total_tokens = None, 0.0, 0
    start = last = time.perf_counter()
    with graceful_interrupt() as stop:
        try:
            while step < args.steps:
                model.train()
                loss, n_tokens = task.loss(trained)  # this rank's share of the batch's mean loss
                optimizer.zero_grad(set_to_none=True)
                # DDP averages the ranks' gradients; the mean's gradient is their sum.
                (loss * dist.world_size).backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
                optimizer.step()
                lr = scheduler.get_last_lr()[0]
                scheduler.step()
                step += 1
                # One all-reduce: the batch's loss and tokens, and whether any rank was signalled
                # (so every rank stops, saves and exits at this same step).
                value, n_tokens, stops = dist.all_sum([loss.item(), n_tokens, stop.requested])
                n_tokens = int(n_tokens)
                if not math.isfinite(value):
                    raise ValueError(f"training diverged at step {step} (loss {value}); "
                                     f"try a lower --lr than {args.lr}")
                history["train"].append([step, value])
                now = time.perf_counter()
                recent.append((n_tokens, now - last))
                last = now
                total_tokens += n_tokens
                smooth_loss = value if smooth_loss is None else 0.95 * smooth_loss + 0.05 * value
                tokens_per_s = sum(n for n, _ in recent) / max(sum(t for _, t in recent), 1e-9)
                bar.update(step, loss=smooth_loss, **{"tok/s": f"{tokens_per_s:,.0f}",
                                                      "grad norm": float(grad_norm)})
                val = {}
                if step % args.eval_every == 0 or step == args.steps:
                    model.eval()
                    metrics = val = task.evaluate(model)
                    history["val"].append([step, metrics])
                    bar.write(f"step {step}: train_loss {smooth_loss:.4f}  {format_metrics(metrics)}  "
                              f"lr {lr:.2e}  {tokens_per_s:,.0f} tok/s")
                metrics_log.log(step, loss=value, lr=lr, **val)
                if val:
                    save_and_plot()
                    last = time.perf_counter()  # evaluation time is not training throughput
                if stops and step < args.steps:
                    save_and_plot()
                    raise Interrupted(f"{kind}: interrupted by {stop.signal_name or 'a signal to another rank'} "
                                      f"at step {step}; saved "
                                      f"{ckpt_path}; the same command with --resume continues it")
        finally:
            bar.close()
            metrics_log.close()
    seconds = time.perf_counter() - start
    # tokens_per_s: the last 50 steps' rate, evaluations excluded (scripts/ddp_throughput.sh).
    metrics_json = metrics_log.finish(metrics, step, seconds=seconds, tokens=total_tokens,
                                      parameters=n_params, tokens_per_s=tokens_per_s)
    progress.summary(kind, seconds=seconds, rate=total_tokens / max(seconds, 1e-9), unit="tokens",
                     final=metrics, files=[ckpt_path, loss_png, metrics_json, metrics_log.csv_path])
    return {"model": model, "metrics": metrics, "checkpoint": ckpt_path, "vocab": vocab,
            "task": task, "history": history, "tokens_per_s": tokens_per_s, "run": run.path}
