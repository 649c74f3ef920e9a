"""CLI for the models: `fastseq train charlm|gpt|seq2seq`, `fastseq sample`,
`fastseq attention` (heatmap PNGs) and `fastseq cells` (LSTM unit view as HTML)."""
import os
import sys

from ..cliargs import (add_device_args, add_run_args, dropout, nonnegative_float, nonnegative_int,
                       open_fraction, positive_float, positive_int)
from .layers import IMPLS

DEFAULT_DATA = {"charlm": "shakespeare", "gpt": "shakespeare", "seq2seq": "dates"}
# A GPT attention figure grows with the square of the prompt: past this many characters it
# stops being readable (a 300-character prompt made a 5595x5592 PNG).
MAX_ATTENTION_CHARS = 64

MODEL_HELP = {
    "charlm": "character-level LSTM language model (truncated BPTT)",
    "gpt": "decoder-only transformer on characters",
    "seq2seq": "LSTM encoder-decoder with additive attention (dates in words -> ISO)",
}


def _common_train_args(p, kind, steps, batch_size, lr, eval_every):
    data_help = ("a text file or folder, or a built-in corpus: shakespeare, stdlib, hello"
                 if kind != "seq2seq" else
                 "'dates' (built-in generated task) or a file of source<TAB>target lines")
    p.add_argument("--data", default=DEFAULT_DATA[kind], help=data_help)
    p.add_argument("--steps", type=positive_int, default=steps, help="total optimizer steps (resume continues to this)")
    p.add_argument("--impl", choices=IMPLS, default="fastseq",
                   help="fastseq's fused layers or torch.nn's (same weights, for comparison)")
    p.add_argument("--batch-size", type=positive_int, default=batch_size)
    p.add_argument("--lr", type=positive_float, default=lr, help="peak Adam learning rate")
    p.add_argument("--warmup", type=nonnegative_int, default=None,
                   help="linear warm-up steps (default: steps/10, at most 100)")
    p.add_argument("--clip", type=positive_float, default=1.0, help="clip gradients to this global norm")
    p.add_argument("--eval-every", type=positive_int, default=eval_every, help="validate and checkpoint every N steps")
    add_run_args(p, f"{kind}-<data>-<impl>-seed<seed>")
    p.set_defaults(func=lambda args: _run_train(kind, args))


def _run_train(kind, args):
    from .train import train

    train(kind, args)
    return 0


def register(subparsers, train_subparsers):
    p = train_subparsers.add_parser("charlm", help=MODEL_HELP["charlm"])
    _common_train_args(p, "charlm", steps=2000, batch_size=32, lr=3e-3, eval_every=250)
    p.add_argument("--seq-len", type=positive_int, default=100, help="truncated-BPTT chunk length")
    p.add_argument("--embed", type=positive_int, default=64)
    p.add_argument("--hidden", type=positive_int, default=256)
    p.add_argument("--layers", type=positive_int, default=2)
    p.add_argument("--dropout", type=dropout, default=0.0)
    p.add_argument("--val-fraction", type=open_fraction, default=0.05)

    p = train_subparsers.add_parser("gpt", help=MODEL_HELP["gpt"])
    _common_train_args(p, "gpt", steps=2000, batch_size=32, lr=1e-3, eval_every=250)
    p.add_argument("--context", type=positive_int, default=128, help="positions the model sees")
    p.add_argument("--d-model", type=positive_int, default=128)
    p.add_argument("--heads", type=positive_int, default=4)
    p.add_argument("--layers", type=positive_int, default=4)
    p.add_argument("--dropout", type=dropout, default=0.0)
    p.add_argument("--positions", choices=["learned", "sinusoidal"], default="learned")
    p.add_argument("--val-fraction", type=open_fraction, default=0.05)

    p = train_subparsers.add_parser("seq2seq", help=MODEL_HELP["seq2seq"])
    _common_train_args(p, "seq2seq", steps=1500, batch_size=64, lr=3e-3, eval_every=250)
    p.add_argument("--embed", type=positive_int, default=32)
    p.add_argument("--hidden", type=positive_int, default=64)
    p.add_argument("--attn-dim", type=positive_int, default=64)

    p = subparsers.add_parser("sample", help="generate text (charlm, gpt) or translate (seq2seq) from a checkpoint")
    _checkpoint_args(p)
    p.add_argument("--prompt", default=None,
                   help="text to continue (default: a newline), or for seq2seq the source sentence")
    p.add_argument("--length", type=positive_int, default=500, help="characters to generate")
    p.add_argument("--temperature", type=nonnegative_float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=nonnegative_int, default=0, help="sample among the k likeliest (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--beam", type=positive_int, default=1, help="seq2seq: beam width (1 = greedy)")
    p.set_defaults(func=_run_sample)

    p = subparsers.add_parser("attention", help="attention heatmap PNG (seq2seq: source vs output; gpt: every head)")
    _checkpoint_args(p)
    p.add_argument("--prompt", default=None, help="source sentence (seq2seq) or text (gpt)")
    p.add_argument("--beam", type=positive_int, default=1, help="seq2seq: beam width (1 = greedy)")
    p.add_argument("--out", default="attention.png")
    p.set_defaults(func=_run_attention)

    p = subparsers.add_parser("cells", help="rank CharLM LSTM units by the features they track; write HTML")
    _checkpoint_args(p)
    p.add_argument("--data", required=True, help="text to read (a file, folder or built-in corpus)")
    p.add_argument("--chars", type=positive_int, default=3000, help="characters of --data to read")
    p.add_argument("--offset", type=nonnegative_int, default=0, help="start this many characters into --data")
    p.add_argument("--layer", type=int, default=-1, help="LSTM layer (-1 = the last)")
    p.add_argument("--top", type=positive_int, default=2, help="units shown per feature")
    p.add_argument("--out", default="cells.html")
    p.add_argument("--png", default=None, help="also draw the best unit per feature into this PNG")
    p.set_defaults(func=_run_cells)


def _checkpoint_args(p):
    p.add_argument("--checkpoint", required=True, help="a checkpoint.pt written by fastseq train")
    p.add_argument("--impl", choices=IMPLS, default=None, help="override the layers the model was trained with")
    add_device_args(p)


def _load(args, kinds):
    from ..cliargs import apply_threads
    from . import checkpoint

    apply_threads(args)
    device = args.device
    state = checkpoint.load(args.checkpoint, expect_kind=kinds)
    model = checkpoint.build_model(state, impl=args.impl, device=device)
    return model, checkpoint.vocab_from_dict(state["vocab"]), state


def _run_sample(args):
    from .sampling import generate_text, translate
    from .tasks import read_pairs

    model, vocab, state = _load(args, ("charlm", "gpt", "seq2seq"))
    if model.kind == "seq2seq":
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
        keep = min(model.context, MAX_ATTENTION_CHARS)
        if len(text) > keep:
            print(f"attention: --prompt has {len(text)} characters; drawing the last {keep} "
                  f"(the figure grows with the square of its length)", file=sys.stderr)
            text = text[-keep:]
        ids = vocab.encode(text, "--prompt")
        with torch.no_grad():
            _, weights = model(ids[None].to(next(model.parameters()).device), return_weights=True)
        plot_gpt_attention([w[0].cpu().numpy() for w in weights], list(text), args.out,
                           title=f"GPT attention on {text[:40]!r}")
    print(f"wrote {args.out}")
    return 0


def _run_cells(args):
    from .cells import cells_report
    from .corpora import load_corpus

    model, vocab, _ = _load(args, ("charlm",))
    if not -model.lstm.num_layers <= args.layer < model.lstm.num_layers:
        raise ValueError(f"--layer: expected -{model.lstm.num_layers}..{model.lstm.num_layers - 1}, got {args.layer}")
    corpus = load_corpus(args.data)
    if args.offset >= len(corpus):
        raise ValueError(f"--offset: {args.offset} is past the end of --data ({len(corpus)} characters)")
    text = corpus[args.offset: args.offset + args.chars]
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
