"""CLI for the models: `fastseq train charlm|gpt|seq2seq`, `fastseq sample`,
`fastseq attention` (heatmap PNGs) and `fastseq cells` (LSTM unit view as HTML)."""
import argparse
import os

from .layers import IMPLS

MODEL_HELP = {
    "charlm": "character-level LSTM language model (truncated BPTT)",
    "gpt": "decoder-only transformer on characters",
    "seq2seq": "LSTM encoder-decoder with additive attention (dates in words -> ISO)",
}


def positive_int(text):
    """argparse type: sizes and counts must be >= 1 (a 0 would fail deep inside torch)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _common_train_args(p, kind, steps, batch_size, lr, eval_every):
    data_help = ("a text file or folder, or a built-in corpus: shakespeare, stdlib, hello"
                 if kind != "seq2seq" else
                 "'dates' (built-in generated task) or a file of source<TAB>target lines")
    p.add_argument("--data", default=None, help=f"{data_help} (default: "
                   f"{'shakespeare' if kind != 'seq2seq' else 'dates'}, or the resumed run's)")
    p.add_argument("--steps", type=int, default=steps, help="total optimizer steps (resume continues to this)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--impl", choices=IMPLS, default="fastseq",
                   help="fastseq's fused layers or torch.nn's (same weights, for comparison)")
    p.add_argument("--batch-size", type=positive_int, default=batch_size)
    p.add_argument("--lr", type=float, default=lr, help="peak Adam learning rate")
    p.add_argument("--warmup", type=int, default=-1, help="linear warm-up steps (default: steps/10, at most 100)")
    p.add_argument("--clip", type=float, default=1.0, help="clip gradients to this global norm")
    p.add_argument("--eval-every", type=positive_int, default=eval_every, help="validate and checkpoint every N steps")
    p.add_argument("--out", default=None, help=f"run folder for checkpoint.pt and loss.png (default runs/{kind})")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="continue from CHECKPOINT (default: the run folder's checkpoint.pt)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=lambda args: _run_train(kind, args))


def _run_train(kind, args):
    from .train import format_metrics, train

    result = train(kind, args)
    print(f"final: {format_metrics(result['metrics'])}")
    return 0


def register(subparsers, train_subparsers):
    p = train_subparsers.add_parser("charlm", help=MODEL_HELP["charlm"])
    _common_train_args(p, "charlm", steps=2000, batch_size=32, lr=3e-3, eval_every=250)
    p.add_argument("--seq-len", type=positive_int, default=100, help="truncated-BPTT chunk length")
    p.add_argument("--embed", type=positive_int, default=64)
    p.add_argument("--hidden", type=positive_int, default=256)
    p.add_argument("--layers", type=positive_int, default=2)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--val-fraction", type=float, default=0.05)

    p = train_subparsers.add_parser("gpt", help=MODEL_HELP["gpt"])
    _common_train_args(p, "gpt", steps=2000, batch_size=32, lr=1e-3, eval_every=250)
    p.add_argument("--context", type=positive_int, default=128, help="positions the model sees")
    p.add_argument("--d-model", type=positive_int, default=128)
    p.add_argument("--heads", type=positive_int, default=4)
    p.add_argument("--layers", type=positive_int, default=4)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--positions", choices=["learned", "sinusoidal"], default="learned")
    p.add_argument("--val-fraction", type=float, default=0.05)

    p = train_subparsers.add_parser("seq2seq", help=MODEL_HELP["seq2seq"])
    _common_train_args(p, "seq2seq", steps=1500, batch_size=64, lr=3e-3, eval_every=250)
    p.add_argument("--embed", type=positive_int, default=32)
    p.add_argument("--hidden", type=positive_int, default=64)
    p.add_argument("--attn-dim", type=positive_int, default=64)

    p = subparsers.add_parser("sample", help="generate text (charlm, gpt) or translate (seq2seq) from a checkpoint")
    _checkpoint_args(p)
    p.add_argument("--prompt", default=None,
                   help="text to continue (default: a newline), or for seq2seq the source sentence")
    p.add_argument("--length", type=int, default=500, help="characters to generate")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--beam", type=int, default=1, help="seq2seq: beam width (1 = greedy)")
    p.set_defaults(func=_run_sample)

    p = subparsers.add_parser("attention", help="attention heatmap PNG (seq2seq: source vs output; gpt: every head)")
    _checkpoint_args(p)
    p.add_argument("--prompt", default=None, help="source sentence (seq2seq) or text (gpt)")
    p.add_argument("--beam", type=int, default=1)
    p.add_argument("--out", default="attention.png")
    p.set_defaults(func=_run_attention)

    p = subparsers.add_parser("cells", help="rank CharLM LSTM units by the features they track; write HTML")
    _checkpoint_args(p)
    p.add_argument("--data", required=True, help="text to read (a file, folder or built-in corpus)")
    p.add_argument("--chars", type=int, default=3000, help="characters of --data to read")
    p.add_argument("--offset", type=int, default=0, help="start this many characters into --data")
    p.add_argument("--layer", type=int, default=-1, help="LSTM layer (default: the last)")
    p.add_argument("--top", type=int, default=2, help="units shown per feature")
    p.add_argument("--out", default="cells.html")
    p.add_argument("--png", default=None, help="also draw the best unit per feature into this PNG")
    p.set_defaults(func=_run_cells)


def _checkpoint_args(p):
    p.add_argument("--checkpoint", required=True, help="a checkpoint.pt written by fastseq train")
    p.add_argument("--device", default="cpu")
    p.add_argument("--impl", choices=IMPLS, default=None, help="override the layers the model was trained with")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")


def _load(args, kinds):
    from . import checkpoint
    from .train import resolve_device

    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    state = checkpoint.load(args.checkpoint, expect_kind=kinds)
    model = checkpoint.build_model(state, impl=args.impl, device=device)
    return model, checkpoint.vocab_from_dict(state["vocab"]), state


def _run_sample(args):
    from .sampling import generate_text, translate
    from .tasks import read_pairs

    model, vocab, state = _load(args, ("charlm", "gpt", "seq2seq"))
    if model.kind == "seq2seq":
        if args.beam < 1:
            raise ValueError(f"--beam: expected a width of at least 1, got {args.beam}")
        sentences = [args.prompt] if args.prompt else [s for s, _ in read_pairs(state["data"])[1][:5]]
        for sentence in sentences:
            output, _, _ = translate(model, vocab, sentence, beam=args.beam)
            print(f"{sentence}  ->  {output}")
        return 0
    prompt = args.prompt if args.prompt is not None else ("\n" if "\n" in vocab.chars else vocab.chars[0])
    print(generate_text(model, vocab, prompt, args.length, args.temperature, args.top_k, args.seed))
    return 0


def _run_attention(args):
    import torch

    from .sampling import translate
    from .viz import plot_gpt_attention, plot_seq2seq_attention

    model, vocab, state = _load(args, ("seq2seq", "gpt"))
    if model.kind == "seq2seq":
        from .tasks import read_pairs

        sentence = args.prompt or read_pairs(state["data"])[1][0][0]
        output, attention, words = translate(model, vocab, sentence, beam=args.beam)
        plot_seq2seq_attention(attention.numpy(), words, list(output) or ["(empty)"], args.out,
                               title=f"{sentence} -> {output}")
    else:
        text = args.prompt or "ROMEO:\nBut soft, what light"
        ids = vocab.encode(text[-model.context:], "--prompt")
        with torch.no_grad():
            _, weights = model(ids[None].to(next(model.parameters()).device), return_weights=True)
        plot_gpt_attention([w[0].cpu().numpy() for w in weights], list(text[-model.context:]), args.out,
                           title=f"GPT attention on {text[:40]!r}")
    print(f"wrote {args.out}")
    return 0


def _run_cells(args):
    from .cells import cells_report
    from .corpora import load_corpus

    model, vocab, _ = _load(args, ("charlm",))
    if not -model.lstm.num_layers <= args.layer < model.lstm.num_layers:
        raise ValueError(f"--layer: expected -{model.lstm.num_layers}..{model.lstm.num_layers - 1}, got {args.layer}")
    text = load_corpus(args.data)[args.offset: args.offset + args.chars]
    if not text:
        raise ValueError(f"--offset: {args.offset} is past the end of --data")
    page, ranking = cells_report(model, vocab, text, args.layer, args.top,
                                 title=f"LSTM cells of {os.path.basename(args.checkpoint)} on {args.data}",
                                 png=args.png)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(page)
    for feature, units in ranking.items():
        print(f"{feature:<18} " + "  ".join(f"unit {u} ({c:+.2f})" for u, c in units))
    print(f"wrote {args.out}" + (f" and {args.png}" if args.png else ""))
    return 0
