"""The training loop every vision trainer shares: a run folder (config.json, metrics.csv,
metrics.json, checkpoint.pt, curves.png) through fastseq.runs, Adam with warm-up and
cosine decay, gradient clipping, periodic evaluation, resume, and a clean stop on
SIGINT/SIGTERM (checkpoint saved at a step boundary). Under torchrun it trains with
DistributedDataParallel as fastseq.models.train does: a task's loss() is this rank's share
of the global batch's mean, evaluations sum over the ranks' shards of the test set."""
import math
import os
import time

import torch

from ... import distributed, progress, runs
from ...cliargs import apply_threads, threads_in_use
from ...signals import Interrupted, graceful_interrupt
from .. import checkpoint
from ..train import lr_lambda


def setup(args):
    """Threads, seed and device from the common arguments, before any data or model is built
    (under torchrun the device is cuda:LOCAL_RANK or cpu, and --batch-size must split evenly)."""
    dist = distributed.current()
    apply_threads(args)
    dist.local_batch(args.batch_size)
    torch.manual_seed(args.seed)
    return torch.device(dist.device if dist.enabled else args.device)  # checked at parse time


def open_run(args, model_name, *name_parts):
    """The RunDir for this run: --out, or runs/<model-parts-impl-seed>."""
    path = args.out or os.path.join("runs", runs.run_name(model_name, *name_parts, args.impl,
                                                           f"seed{args.seed}"))
    return runs.RunDir(path, resume=args.resume, overwrite=args.overwrite)


def fit(args, run, model, task, vocab=None):
    """Train model on task until args.steps. task: loss(model) -> (loss, {name: float}),
    evaluate(model) -> {metric: float} (every --eval-every steps), final(model) -> more
    metrics measured once at the end (e.g. beam search), state_dict()/load_state_dict(),
    data (a config dict). Returns the final metrics; metrics.json holds them under "final"."""
    from .viz import plot_curves

    dist = distributed.current()
    ckpt_path = str(run.file("checkpoint.pt"))
    curves_png = str(run.file("curves.png"))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    warmup = min(100, args.steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup, args.steps))
    metrics = runs.Metrics(run, model.kind, tensorboard=args.tensorboard, resume=args.resume)
    step = 0
    if args.resume:
        state = dist.on_main(checkpoint.load, ckpt_path, expect_kind=model.kind)
        if state["config"] != model.config:
            raise ValueError(f"--resume: {ckpt_path} was trained with {state['config']}, "
                             f"not {model.config}; use a new --out or --overwrite")
        step = state["step"]
        if step >= args.steps:
            raise ValueError(f"--steps: the run is already at step {step}; "
                             f"ask for more than {step} steps to resume it")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        task.load_state_dict(state["task"])
        metrics.rewind(step)
        progress.note(f"resuming {run.path} at step {step}")
    trained = dist.wrap(model)  # after loading: DDP broadcasts rank 0's weights from here on
    dist.seed_rank(args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    run.save_config({"model": model.kind, **{k: v for k, v in vars(args).items() if k not in ("func", "command")},
                     "model_config": model.config, "data": task.data, "warmup": warmup,
                     "parameters": n_params})
    progress.header(model.kind, parameters=n_params, data=task.data, device=args.device,
                    threads=threads_in_use(), impl=model.config["impl"], steps=f"{step}->{args.steps}",
                    run=run.path, **({"processes": dist.world_size} if dist.enabled else {}))

    def save():
        # Every rank (the task's state may be gathered from all); rank 0 writes.
        checkpoint.save(ckpt_path, model, vocab, step, metrics.history, optimizer, scheduler, task,
                        task.data)
        if dist.is_main:
            plot_curves(metrics.history, curves_png, title=run.path.name)

    final, start = {}, time.perf_counter()
    bar = progress.Progress(args.steps, initial=step, desc=f"train {model.kind}",
                            enabled=not args.no_progress)
    with graceful_interrupt() as stop:
        try:
            while step < args.steps:
                model.train()
                loss, parts = task.loss(trained)  # this rank's shares of the batch's means
                optimizer.zero_grad(set_to_none=True)
                (loss * dist.world_size).backward()  # DDP averages; the mean's gradient is the sum
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
                optimizer.step()
                lr = scheduler.get_last_lr()[0]
                scheduler.step()
                step += 1
                # One all-reduce: the loss, its parts, and whether any rank was signalled.
                names = sorted(parts)
                value, stops, *summed = dist.all_sum([loss.item(), stop.requested] + [parts[k] for k in names])
                parts = dict(zip(names, summed))
                if not math.isfinite(value):
                    raise ValueError(f"training diverged at step {step} (loss {value}); "
                                     f"try a lower --lr than {args.lr}")
                bar.update(step, loss=value)
                val = {}
                if step % args.eval_every == 0 or step == args.steps:
                    model.eval()
                    final = val = task.evaluate(model)
                    bar.write(f"step {step}: loss {value:.4f}  " +
                              "  ".join(f"{k} {v:.4f}" for k, v in val.items()))
                metrics.log(step, loss=value, lr=lr, **parts, **val)
                if val:
                    save()
                if stops and step < args.steps:
                    save()
                    raise Interrupted(f"{model.kind}: interrupted by {stop.signal_name or 'a signal to another rank'} "
                                      f"at step {step}; "
                                      f"saved {ckpt_path}; the same command with --resume continues it")
        finally:
            bar.close()
    seconds = time.perf_counter() - start
    model.eval()
    final = {**final, **task.final(model)}
    metrics_json = metrics.finish(final, step, seconds=seconds, parameters=n_params)
    progress.summary(model.kind, seconds=seconds, rate=(step - bar.initial) / max(seconds, 1e-9),
                     unit="steps", final=final, files=[ckpt_path, curves_png, metrics_json])
    return final
