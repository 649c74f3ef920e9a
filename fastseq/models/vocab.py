"""Vocabularies: characters for the language models, words -> characters for seq2seq.
Stored in checkpoints as plain lists so sampling needs no corpus."""
import torch

SPECIALS = ["<pad>", "<s>", "</s>"]  # ids 0, 1, 2 = seq2seq.PAD, BOS, EOS


class CharVocab:
    def __init__(self, chars):
        self.chars = list(chars)
        self.index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text):
        return cls(sorted(set(text)))

    def __len__(self):
        return len(self.chars)

    def encode(self, text, what="text"):
        unknown = sorted(set(text) - self.index.keys())
        if unknown:
            raise ValueError(f"{what}: characters {''.join(unknown)!r} are not in the model's "
                             f"vocabulary of {len(self)} characters")
        return torch.tensor([self.index[c] for c in text], dtype=torch.long)

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)


class TokenVocab:
    """Specials first (pad, BOS, EOS), then the symbols; words or characters."""

    def __init__(self, symbols):
        symbols = list(symbols)
        self.symbols = symbols if symbols[:3] == SPECIALS else SPECIALS + symbols
        self.index = {s: i for i, s in enumerate(self.symbols)}

    def __len__(self):
        return len(self.symbols)

    def encode(self, symbols, what="input", eos=False):
        unknown = sorted({s for s in symbols if s not in self.index})
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:8])
            raise ValueError(f"{what}: {shown} not in the model's vocabulary "
                             f"({len(self.symbols) - 3} known symbols)")
        return [self.index[s] for s in symbols] + ([2] if eos else [])

    def decode(self, ids, joiner=""):
        out = []
        for i in ids:
            if i == 2:
                break
            if i > 2:
                out.append(self.symbols[i])
        return joiner.join(out)
