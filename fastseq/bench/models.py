"""Training throughput of the models: one train step (forward + backward + Adam step on a
fixed batch) of CharLM and GPT built with --impl torch against --impl fastseq, same seed,
weights and data. tokens/s = tokens per step (in the label) / step time;
`python -m fastseq.bench.models` prints tokens/s directly.

Whatever fastseq.nn does not (yet) fuse runs torch's own layer in both columns; the
ratio then measures the fused LSTM / attention alone. Flop counts: flops.charlm and
flops.gpt (the Adam step is not counted). No "scaling" cases.

gpt_step (full suite): the GPT train step at attention-heavy shapes (T = 128..512, head dim
32..64, batch 8..32), eager and with both models under torch.compile (inductor; fastseq's
attention enters the graph as its custom ops)."""
import sys

import torch
import torch.nn.functional as F

from ..models import GPT, CharLM
from . import flops
from .harness import BenchCase, RunSettings, run_case

OPS = ("charlm", "gpt", "gpt_step")

REFERENCE = "torch.nn (--impl torch)"
NOTE = "train step = fwd+bwd+Adam"
# What fastseq.nn does not fuse runs torch's own module in both columns of a GPT case.
GPT_TORCH_PARTS = "Embedding, Linear, LayerNorm, GELU, Adam: torch's on both sides (only attention is fused)"


def _train_step_pair(build, make_batch, device, compile=False):
    """(torch step, fastseq step): identical models (same seed) with their own Adam; with
    compile, each model's forward (and so its backward) under torch.compile."""
    steps = []
    batch = make_batch()
    for impl in ("torch", "fastseq"):
        torch.manual_seed(0)
        model = build(impl).to(device).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        if compile:
            model = torch.compile(model)

        def step(model=model, optimizer=optimizer):
            x, y = batch
            out = model(x)
            logits = out[0] if isinstance(out, tuple) else out
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return loss.detach()
        steps.append(step)
    return tuple(steps)


def charlm_case(device, vocab, seq_len, batch, embed, hidden, layers):
    def make_batch():
        data = torch.randint(vocab, (seq_len + 1, batch), device=device)
        return data[:-1], data[1:]  # time-major, as the BPTT stream feeds it

    def setup():
        return _train_step_pair(lambda impl: CharLM(vocab, embed, hidden, layers, impl=impl), make_batch, device)
    return BenchCase("charlm", f"T={seq_len} B={batch} E={embed} H={hidden} L={layers} V={vocab} "
                     f"({seq_len * batch} tok/step)", "train", REFERENCE, setup, note=NOTE,
                     flops=flops.charlm(seq_len, batch, embed, hidden, layers, vocab),
                     dims=dict(T=seq_len, B=batch, E=embed, H=hidden, L=layers))


def gpt_case(device, vocab, context, batch, d_model, heads, layers):
    def make_batch():
        data = torch.randint(vocab, (batch, context + 1), device=device)
        return data[:, :-1], data[:, 1:]

    def setup():
        return _train_step_pair(lambda impl: GPT(vocab, context, d_model, heads, layers, impl=impl),
                                make_batch, device)
    return BenchCase("gpt", f"T={context} B={batch} D={d_model} heads={heads} L={layers} V={vocab} "
                     f"({context * batch} tok/step)", "train", REFERENCE, setup,
                     note=f"{NOTE}; {GPT_TORCH_PARTS}",
                     flops=flops.gpt(context, batch, d_model, layers, vocab),
                     dims=dict(T=context, B=batch, D=d_model, L=layers))


def gpt_step_case(device, compiled, context, batch, d_model, heads, layers, vocab=65):
    """The GPT train step, fastseq.nn vs torch.nn, both eager or both under torch.compile."""
    def make_batch():
        data = torch.randint(vocab, (batch, context + 1), device=device)
        return data[:, :-1], data[:, 1:]

    def setup():
        return _train_step_pair(lambda impl: GPT(vocab, context, d_model, heads, layers, impl=impl),
                                make_batch, device, compile=compiled)
    how = "compiled" if compiled else "eager"
    reference = "torch.compile(torch.nn GPT)" if compiled else "torch.nn GPT, eager"
    note = f"{NOTE}; {GPT_TORCH_PARTS}" + (
        "; both under torch.compile (inductor), fastseq attention as its custom ops" if compiled else "")
    return BenchCase("gpt_step", f"T={context} B={batch} D={d_model} heads={heads} (hd {d_model // heads}) "
                     f"L={layers} {how} ({context * batch} tok/step)", "train", reference, setup,
                     note=note, flops=flops.gpt(context, batch, d_model, layers, vocab),
                     dims=dict(T=context, B=batch, D=d_model, L=layers, compiled=int(compiled)))


# (T, B, d_model, heads, layers): head dims 32 and 64, 4096 tokens a step; compiled for the
# shortest and the longest (each compile costs tens of seconds on 2 cores).
GPT_STEP_SHAPES = [(128, 32, 128, 4, 2), (256, 16, 128, 2, 2), (512, 8, 128, 2, 2)]
GPT_STEP_COMPILED = [(128, 32, 128, 4, 2), (512, 8, 128, 2, 2)]


def cases(suite, device):
    if suite == "small":
        return [charlm_case(device, 65, 35, 16, 32, 128, 1),
                gpt_case(device, 65, 64, 8, 64, 4, 2)]
    if suite == "scaling":
        return []
    out = []
    for hidden, layers in ((128, 1), (256, 2), (512, 2)):
        out.append(charlm_case(device, 65, 100, 32, 64, hidden, layers))
    for d_model, heads, layers, context in ((64, 4, 2, 64), (128, 4, 4, 128), (256, 8, 4, 256)):
        out.append(gpt_case(device, 65, context, 32, d_model, heads, layers))
    out += [gpt_step_case(device, False, *shape) for shape in GPT_STEP_SHAPES]
    out += [gpt_step_case(device, True, *shape) for shape in GPT_STEP_COMPILED]
    return out


def main(argv=None):
    """Print tokens/s of each case for both implementations."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--suite", choices=["small", "full"], default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    settings = RunSettings(repeats=args.repeats, threads=torch.get_num_threads())
    print(f"{'op':<7} {'case':<58} {'torch tok/s':>12} {'fastseq tok/s':>14} {'ratio':>6}")
    for case in cases(args.suite, device):
        result = run_case(case, device, settings)
        tokens = int(case.label.rsplit("(", 1)[1].split()[0])
        print(f"{case.op:<7} {case.label:<58} {tokens / result.ref_ms * 1e3:>12,.0f} "
              f"{tokens / result.fast_ms * 1e3:>14,.0f} {result.ratio:>5.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
