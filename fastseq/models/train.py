"""The training loop shared by the three models: Adam, linear warm-up then cosine decay,
gradient clipping by global norm, periodic validation, resumable checkpoints, a tqdm bar
with loss and tokens/s, and a loss-curve PNG next to the checkpoint."""
import collections
import math
import os
import time

import torch

from . import checkpoint
from .char_lm import CharLM
from .corpora import load_corpus
from .gpt import GPT
from .seq2seq import Seq2Seq
from .tasks import PairsTask, StreamTask, WindowTask, pair_vocabularies, read_pairs
from .vocab import CharVocab

DEFAULT_DATA = {"charlm": "shakespeare", "gpt": "shakespeare", "seq2seq": "dates"}


def resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"--device: expected cpu or cuda, got {name!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device here (use --device cpu)")
    return device


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


def make_task(kind, args, vocab, data, device):
    if kind == "seq2seq":
        train, val = read_pairs(data)
        return PairsTask(train, val, *vocab, args.batch_size, device, args.seed)
    text = load_corpus(data)
    if kind == "charlm":
        return StreamTask(text, vocab, args.batch_size, args.seq_len, args.val_fraction, device)
    return WindowTask(text, vocab, args.batch_size, args.context, args.val_fraction, device, args.seed)


def make_vocab(kind, data):
    if kind == "seq2seq":
        return pair_vocabularies(*read_pairs(data))
    return CharVocab.from_text(load_corpus(data))


def format_metrics(metrics):
    return "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def train(kind, args):
    """Train (or resume) one model as the CLI arguments say. Returns a dict with the model,
    the final validation metrics and the paths written."""
    from tqdm import tqdm
    from .viz import plot_loss

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.steps < 1:
        raise ValueError(f"--steps: expected a positive number of steps, got {args.steps}")
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    out_dir = args.out or os.path.join("runs", kind)
    ckpt_path = os.path.join(out_dir, "checkpoint.pt")

    state = None
    if args.resume:
        state = checkpoint.load(ckpt_path if args.resume == "auto" else args.resume, expect_kind=kind)
    data = args.data or (state or {}).get("data") or DEFAULT_DATA[kind]
    vocab = checkpoint.vocab_from_dict(state["vocab"]) if state else make_vocab(kind, data)
    task = make_task(kind, args, vocab, data, device)
    if state:
        model = checkpoint.build_model(state, impl=args.impl, device=device)
    else:
        model = new_model(kind, args, vocab).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    warmup = args.warmup if args.warmup >= 0 else min(100, args.steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup, args.steps))
    step, history = 0, {"train": [], "val": []}
    if state:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        task.load_state_dict(state["task"])
        step, history = state["step"], state["history"]
        print(f"resuming at step {step}: the model's shape and vocabulary come from the checkpoint")
        if step >= args.steps:
            raise ValueError(f"--steps: the checkpoint is already at step {step}; "
                             f"ask for more than {step} steps to resume")

    n_params = sum(p.numel() for p in model.parameters())
    print(f"{kind}: {n_params / 1e6:.2f}M parameters, impl={model.config['impl']}, device={device}, "
          f"data={data}, vocabulary {len(vocab) if kind != 'seq2seq' else tuple(map(len, vocab))}, "
          f"steps {step}->{args.steps}", flush=True)

    def save_and_plot():
        checkpoint.save(ckpt_path, model, vocab, step, history, optimizer, scheduler, task, data)
        plot_loss(history, os.path.join(out_dir, "loss.png"), title=f"{kind} on {os.path.basename(str(data))}")

    metrics = {}
    bar = tqdm(total=args.steps, initial=step, desc=f"train {kind}", unit="step",
               disable=args.quiet or None)
    # Throughput over the last 50 steps: a single slow step (another process grabbing the
    # CPU) then neither dominates nor vanishes as it would in a per-step average.
    recent = collections.deque(maxlen=50)
    smooth_loss, tokens_per_s, last = None, 0.0, time.perf_counter()
    try:
        while step < args.steps:
            model.train()
            loss, n_tokens = task.loss(model)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            optimizer.step()
            scheduler.step()
            step += 1
            value = loss.item()
            if not math.isfinite(value):
                raise ValueError(f"training diverged at step {step} (loss {value}); "
                                 f"try a lower --lr than {args.lr}")
            history["train"].append([step, value])
            now = time.perf_counter()
            recent.append((n_tokens, now - last))
            last = now
            smooth_loss = value if smooth_loss is None else 0.95 * smooth_loss + 0.05 * value
            tokens_per_s = sum(n for n, _ in recent) / max(sum(t for _, t in recent), 1e-9)
            bar.set_postfix({"loss": f"{smooth_loss:.3f}", "tok/s": f"{tokens_per_s:,.0f}",
                             "grad norm": f"{float(grad_norm):.2f}"}, refresh=False)
            bar.update(1)
            if step % args.eval_every == 0 or step == args.steps:
                model.eval()
                metrics = task.evaluate(model)
                history["val"].append([step, metrics])
                bar.write(f"step {step}: train_loss {smooth_loss:.4f}  {format_metrics(metrics)}  "
                          f"lr {scheduler.get_last_lr()[0]:.2e}  {tokens_per_s:,.0f} tok/s")
                save_and_plot()
                last = time.perf_counter()  # evaluation time is not training throughput
    except KeyboardInterrupt:
        bar.write(f"interrupted at step {step}: saving {ckpt_path} (resume with --resume)")
        save_and_plot()
        raise
    finally:
        bar.close()
    print(f"wrote {ckpt_path} and {os.path.join(out_dir, 'loss.png')}")
    return {"model": model, "metrics": metrics, "checkpoint": ckpt_path, "vocab": vocab,
            "task": task, "history": history, "tokens_per_s": tokens_per_s}
