"""Generation from trained models: temperature and top-k sampling for CharLM and GPT
(reproducible with a seed via a private torch.Generator), greedy and beam-search
translation for seq2seq."""
import torch


def sample_next(logits, temperature, top_k, generator):
    """logits (V,) -> one token id."""
    if temperature <= 0:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if top_k and top_k < logits.numel():
        kth = logits.topk(top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1).cpu()
    return int(torch.multinomial(probs, 1, generator=generator))


def check_sampling_args(length, temperature, top_k):
    if length < 0:
        raise ValueError(f"--length: expected a non-negative number of characters, got {length}")
    if temperature < 0:
        raise ValueError(f"--temperature: expected >= 0 (0 = greedy), got {temperature}")
    if top_k < 0:
        raise ValueError(f"--top-k: expected >= 0 (0 = no limit), got {top_k}")


@torch.no_grad()
def generate_text(model, vocab, prompt, length, temperature=1.0, top_k=0, seed=0):
    """prompt + length sampled characters. temperature 0 is greedy (argmax)."""
    check_sampling_args(length, temperature, top_k)
    if not prompt:
        raise ValueError("--prompt: expected at least one character to start from, got ''")
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    ids = vocab.encode(prompt, "--prompt").tolist()
    if model.kind == "charlm":
        logits, state = model(torch.tensor(ids, device=device)[:, None])
        logits = logits[-1, 0]
        for _ in range(length):
            ids.append(sample_next(logits, temperature, top_k, generator))
            logits, state = model(torch.tensor([[ids[-1]]], device=device), state)
            logits = logits[-1, 0]
    else:
        for _ in range(length):
            window = torch.tensor(ids[-model.context:], device=device)[None]
            logits = model(window)[0, -1]
            ids.append(sample_next(logits, temperature, top_k, generator))
    return vocab.decode(ids)


@torch.no_grad()
def translate(model, vocabs, sentence, beam=1, max_len=None):
    """(output string, attention (T_out, S), source words) for one source sentence."""
    src_vocab, tgt_vocab = vocabs
    words = sentence.lower().split()
    if not words:
        raise ValueError("--prompt: expected a source sentence, got an empty one")
    device = next(model.parameters()).device
    src = torch.tensor(src_vocab.encode(words, "--prompt"), device=device)[:, None]
    max_len = max_len or 4 * len(words) + 10
    if beam > 1:
        tokens, attention, _ = model.beam_search(src, beam, max_len)
        attention = attention[: len(tokens)]
    else:
        out, attention = model.greedy(src, max_len)
        tokens = [t for t in out[0].tolist() if t != 0]
        if 2 in tokens:
            tokens = tokens[: tokens.index(2)]
        attention = attention[0, : len(tokens)]
    return tgt_vocab.decode(tokens), attention.cpu(), words
