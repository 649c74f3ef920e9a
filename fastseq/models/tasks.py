"""Training data feeds, one per model: a batched character stream for truncated BPTT
(CharLM), random context windows (GPT) and padded (source, target) pairs (seq2seq).
Each yields a loss per step, evaluates on its validation split and saves its position.

In a distributed run (fastseq.distributed) every rank draws the same global batch and keeps
its own block of rows, so the ranks' rows at step k together are the one-process batch at
step k. loss() returns this rank's share of the batch's mean loss (the shares sum to it over
ranks), validation sums over the ranks' shards of the split, and state_dict() holds the whole
run's position (any number of processes can resume it)."""
import math
import os
import random

import torch
import torch.nn.functional as F

from .. import distributed
from . import dates
from .seq2seq import BOS, EOS, PAD
from .vocab import CharVocab, TokenVocab

LN2 = math.log(2.0)


def split_validation(data: torch.Tensor, val_fraction: float, min_val: int):
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"--val-fraction: expected a number in (0, 1), got {val_fraction}")
    n_val = max(int(len(data) * val_fraction), min_val)
    if len(data) - n_val < min_val:
        raise ValueError(f"--data: corpus too small: {len(data)} characters, expected at least "
                         f"{2 * min_val} for a train and a validation split of this --seq-len/--context")
    return data[:-n_val], data[-n_val:]


def text_metrics(mean_nats: float):
    return {"val_loss": mean_nats, "val_ppl": math.exp(min(mean_nats, 50.0)),
            "val_bpc": mean_nats / LN2}


class StreamTask:
    """Truncated BPTT: the text is cut into batch_size parallel streams (columns); each
    step takes the next seq_len rows, and the LSTM state is carried across chunks but
    detached, so gradients flow seq_len steps back while memory reaches further."""

    def __init__(self, text, vocab: CharVocab, batch_size, seq_len, val_fraction, device, dist=None):
        self.dist = dist = dist or distributed.current()
        data = vocab.encode(text, "--data")
        train, val = split_validation(data, val_fraction, seq_len + 1)
        self.batch_size, self.seq_len, self.device = batch_size, seq_len, device
        dist.local_batch(batch_size)  # refuses a batch the ranks cannot split evenly
        # This rank's streams (columns) of the global batch; the same for validation.
        self.columns = dist.shard(batch_size)
        self.train = self.batchify(train, batch_size)[:, self.columns].contiguous().to(device)
        val_columns = min(batch_size, max(1, len(val) // (seq_len + 1)))
        self.val_columns = val_columns
        self.val = self.batchify(val, val_columns)[:, dist.shard(val_columns)].contiguous().to(device)
        if self.train.shape[0] < 2:
            raise ValueError(f"--batch-size: {batch_size} streams leave fewer than 2 characters "
                             f"each of a {len(train)}-character training split")
        self.position, self.state = 0, None

    @staticmethod
    def batchify(data, columns):
        rows = len(data) // columns
        return data[: rows * columns].view(columns, rows).t().contiguous()  # (rows, columns)

    def tokens_per_step(self):
        return self.batch_size * self.seq_len

    def loss(self, model):
        if self.position + 1 >= self.train.shape[0]:
            self.position, self.state = 0, None  # an epoch ends: start the streams afresh
        n = min(self.seq_len, self.train.shape[0] - 1 - self.position)
        x = self.train[self.position: self.position + n]
        y = self.train[self.position + 1: self.position + 1 + n]
        self.position += n
        logits, state = model(x, self.state)
        self.state = tuple(s.detach() for s in state)
        # Every rank holds batch_size / world_size streams: its mean is its share of the mean.
        return self.dist.share(F.cross_entropy(logits.flatten(0, 1), y.flatten())), x.numel()

    @torch.no_grad()
    def evaluate(self, model, max_tokens=100_000):
        total, count, seen = 0.0, 0, 0
        state = None
        for start in range(0, self.val.shape[0] - 1, self.seq_len):
            n = min(self.seq_len, self.val.shape[0] - 1 - start)
            if self.val.shape[1]:  # a rank may hold no validation stream
                x, y = self.val[start:start + n], self.val[start + 1:start + 1 + n]
                logits, state = model(x, state)
                total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
                count += y.numel()
            seen += n * self.val_columns  # over all ranks: they all stop after the same chunk
            if seen >= max_tokens:
                break
        total, count = self.dist.all_sum([total, count])
        return text_metrics(total / count)

    def state_dict(self):
        # The carried LSTM state too: a resumed run then continues exactly as an uninterrupted
        # one. Gathered from every rank's streams into the whole batch's (layers, batch, hidden).
        local = None if self.state is None else [s.cpu() for s in self.state]
        parts = self.dist.gather(local)
        whole = None if parts[0] is None else [torch.cat(p, dim=1) for p in zip(*parts)]
        return {"position": self.position, "state": whole}

    def load_state_dict(self, state):
        carried = state.get("state")
        self.position = state["position"]
        self.state = None if carried is None else tuple(s[:, self.columns].to(self.device) for s in carried)


class WindowTask:
    """GPT: each step draws batch_size random windows of context+1 characters."""

    def __init__(self, text, vocab: CharVocab, batch_size, context, val_fraction, device, seed, dist=None):
        self.dist = dist or distributed.current()
        data = vocab.encode(text, "--data")
        self.train, self.val = (d.to(device) for d in split_validation(data, val_fraction, context + 1))
        self.batch_size, self.context, self.device = batch_size, context, device
        self.local_batch = self.dist.local_batch(batch_size)
        # The same generator on every rank: all draw the global batch's windows, each keeps its rows.
        self.generator = torch.Generator().manual_seed(seed)

    def tokens_per_step(self):
        return self.batch_size * self.context

    def windows(self, data, starts):
        index = starts[:, None] + torch.arange(self.context + 1)
        chunk = data[index.to(data.device)]
        return chunk[:, :-1], chunk[:, 1:]

    def loss(self, model):
        starts = torch.randint(len(self.train) - self.context, (self.batch_size,), generator=self.generator)
        x, y = self.windows(self.train, starts[self.dist.shard(self.batch_size)])
        return self.dist.share(F.cross_entropy(model(x).flatten(0, 1), y.flatten())), x.numel()

    @torch.no_grad()
    def evaluate(self, model, max_windows=256):
        # Evenly spaced windows: the same ones every evaluation, so curves are comparable.
        count = min(max_windows, max(1, len(self.val) - self.context))
        starts = torch.linspace(0, len(self.val) - self.context - 1, count).long()
        total, n = 0.0, 0
        for batch in starts[self.dist.shard(count)].split(self.local_batch):
            x, y = self.windows(self.val, batch)
            total += F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="sum").item()
            n += y.numel()
        total, n = self.dist.all_sum([total, n])
        return text_metrics(total / n)

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])


def read_pairs(data):
    """The seq2seq data: "dates" (generated) or a file of `source<TAB>target` lines.
    Returns (train, val) lists of (source words, target string)."""
    if data in (None, "dates"):
        val = dates.date_pairs(500, seed=1)
        held_out = {iso for _, iso in val}
        # Training dates never include a validation date, so accuracy measures generalisation.
        train = [p for p in dates.date_pairs(40_000, seed=2) if p[1] not in held_out]
        return train, val
    from .corpora import load_corpus

    if not os.path.isfile(data):
        raise FileNotFoundError(f"--data: no such file: {data!r} (seq2seq takes 'dates' or a file "
                                f"of source<TAB>target lines)")
    pairs = []
    for number, line in enumerate(load_corpus(data).splitlines(), 1):
        if not line.strip():
            continue
        if line.count("\t") != 1:
            raise ValueError(f"--data: line {number}: expected 'source<TAB>target', got {line[:60]!r}")
        src, tgt = line.split("\t")
        pairs.append((src.strip(), tgt.strip()))
    if len(pairs) < 10:
        raise ValueError(f"--data: expected at least 10 source<TAB>target pairs, got {len(pairs)}")
    n_val = max(1, len(pairs) // 10)
    return pairs[:-n_val], pairs[-n_val:]


def pair_vocabularies(train, val):
    src_words = sorted({w for s, _ in train + val for w in s.split()})
    tgt_chars = sorted({c for _, t in train + val for c in t})
    return TokenVocab(src_words), TokenVocab(tgt_chars)


def pad_batch(sequences, device, length=None):
    """(length, batch) of PAD-filled token ids; length defaults to the longest sequence."""
    length = length or max(len(s) for s in sequences)
    out = torch.full((length, len(sequences)), PAD, dtype=torch.long)
    for i, s in enumerate(sequences):
        out[: len(s), i] = torch.tensor(s, dtype=torch.long)
    return out.to(device)


class PairsTask:
    """Seq2seq with teacher forcing: random batches of pairs; validation reports the
    exact-match accuracy of greedy decoding."""

    def __init__(self, train, val, src_vocab, tgt_vocab, batch_size, device, seed, dist=None):
        self.dist = dist or distributed.current()
        self.dist.local_batch(batch_size)
        self.src_vocab, self.tgt_vocab = src_vocab, tgt_vocab
        self.train = [self.encode_pair(s, t) for s, t in train]
        self.val_pairs = val
        self.batch_size, self.device = batch_size, device
        self.max_target = max(len(t) for _, t in train + val) + 1
        self.rng = random.Random(seed)  # the same on every rank: each keeps its rows of the batch

    def encode_pair(self, src, tgt):
        return self.src_vocab.encode(src.split(), "source"), self.tgt_vocab.encode(list(tgt), "target", eos=True)

    def tokens_per_step(self):
        return self.batch_size * self.max_target

    def loss(self, model):
        batch = self.rng.sample(self.train, min(self.batch_size, len(self.train)))
        # Padded to the whole batch's lengths (the encoder reads the padding backwards) and
        # normalised by the whole batch's target tokens: the ranks' shares sum to its mean.
        src_len, tgt_len = max(len(s) for s, _ in batch), max(len(t) for _, t in batch)
        n_targets = sum(len(t) for _, t in batch)
        mine = batch[self.dist.shard(len(batch))]
        src = pad_batch([s for s, _ in mine], self.device, src_len)
        tgt = pad_batch([t for _, t in mine], self.device, tgt_len)
        tgt_in = torch.cat([torch.full_like(tgt[:1], BOS), tgt[:-1]])
        logits = model(src, tgt_in)
        loss = F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=PAD, reduction="sum")
        return loss / n_targets, int((tgt != PAD).sum())

    @torch.no_grad()
    def evaluate(self, model):
        correct, total_loss, total_tokens = 0, 0.0, 0
        mine = self.val_pairs[self.dist.shard(len(self.val_pairs))]
        for start in range(0, len(mine), 256):
            chunk = mine[start:start + 256]
            encoded = [self.encode_pair(s, t) for s, t in chunk]
            src = pad_batch([s for s, _ in encoded], self.device)
            tgt = pad_batch([t for _, t in encoded], self.device)
            tgt_in = torch.cat([torch.full_like(tgt[:1], BOS), tgt[:-1]])
            logits = model(src, tgt_in)
            total_loss += F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=PAD,
                                          reduction="sum").item()
            total_tokens += int((tgt != PAD).sum())
            tokens, _ = model.greedy(src, self.max_target)
            for row, (_, target) in zip(tokens.tolist(), chunk):
                correct += self.tgt_vocab.decode(row) == target
        correct, total_loss, total_tokens = self.dist.all_sum([correct, total_loss, total_tokens])
        return {"val_loss": total_loss / total_tokens, "exact_match": correct / len(self.val_pairs)}

    def state_dict(self):
        return {"rng": repr(self.rng.getstate())}

    def load_state_dict(self, state):
        import ast
        self.rng.setstate(ast.literal_eval(state["rng"]))  # stored as text: weights_only loads
