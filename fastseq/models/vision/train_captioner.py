"""`fastseq train captioner`: the shape-scene task (teacher-forced cross-entropy, the
doubly stochastic attention penalty optional) and its evaluation on held-out scenes and on
the unseen colour-shape split: exact match, BLEU-4, grounding. Under torchrun each rank keeps
its rows of the global batch and captions its shard of the evaluation scenes; the captions
are gathered (BLEU is a corpus statistic) and the grounding counts summed."""
import torch

from ... import distributed
from ..seq2seq import BOS, EOS, PAD
from ..vocab import TokenVocab
from . import loop
from .caption_metrics import corpus_bleu, exact_match, grounding_hits
from .captioner import Captioner
from .data_shapes import WORDS, ShapeScenes, object_of_word

MAX_WORDS = 14  # three objects: 13 words and EOS


def encode_captions(vocab, captions, device):
    """-> inputs (T, B) from BOS, targets (T, B) ending in EOS, PAD after."""
    ids = [vocab.encode(c, "caption", eos=True) for c in captions]
    length = max(map(len, ids))
    tgt = torch.full((length, len(ids)), PAD, dtype=torch.long)
    for j, seq in enumerate(ids):
        tgt[: len(seq), j] = torch.tensor(seq)
    tgt_in = torch.cat([torch.full((1, len(ids)), BOS, dtype=torch.long), tgt[:-1]])
    return tgt_in.masked_fill(tgt_in == EOS, PAD).to(device), tgt.to(device)


def caption_text(vocab, tokens):
    return vocab.decode(tokens, joiner=" ").split()


def evaluate_scenes(model, vocab, scenes, device, beam=1, batch=250):
    """exact match, BLEU-4 and grounding of the model's captions for `scenes`. Grounding is
    measured on the reference captions (teacher forced), so every object word counts, also
    in scenes whose generated caption is wrong."""
    dist = distributed.current()
    hyps, hits, total = [], 0, 0
    mine = range(len(scenes))[dist.shard(len(scenes))]
    for start in range(mine.start, mine.stop, batch):
        stop = min(start + batch, mine.stop)
        images = scenes.images[start:stop].to(device)
        captions = scenes.captions[start:stop]
        if beam > 1:
            hyps += [caption_text(vocab, model.beam_search(images[i:i + 1], beam, MAX_WORDS)[0])
                     for i in range(len(images))]
        else:
            tokens, _ = model.decode(images, MAX_WORDS)
            hyps += [caption_text(vocab, row) for row in tokens.tolist()]
        if model.attention_kind == "soft":
            tgt_in, _ = encode_captions(vocab, captions, device)
            with torch.no_grad():
                _, attn = model(images, tgt_in)
            for i, caption in enumerate(captions):
                h, n = grounding_hits(attn[:, i].cpu(), scenes.masks[start + i],
                                      object_of_word(_objects(caption)), model.grid)
                hits, total = hits + h, total + n
    hyps = [h for part in dist.gather(hyps) for h in part]  # rank order is scene order
    hits, total = dist.all_sum([hits, total])
    metrics = {"exact_match": exact_match(hyps, scenes.captions),
               "bleu4": corpus_bleu(hyps, [[c] for c in scenes.captions])}
    if total:
        metrics["grounding"] = hits / total
    return metrics


def _objects(caption):
    """The (colour, shape) pairs a reference caption names, left to right."""
    return [(caption[i + 1], caption[i + 2]) for i, w in enumerate(caption) if w == "a"]


class CaptionTask:
    def __init__(self, args, vocab, device):
        self.dist = distributed.current()
        self.vocab, self.device = vocab, device
        self.batch_size, self.penalty = args.batch_size, args.doubly_stochastic
        self.beam = args.beam
        self.data = {"train": args.train_scenes, "size": args.image_size, "seed": args.seed}
        self.train = ShapeScenes(args.train_scenes, args.image_size, "train", args.seed)
        self.val = ShapeScenes(args.val_scenes, args.image_size, "val", args.seed)
        self.unseen = ShapeScenes(args.val_scenes, args.image_size, "unseen", args.seed)
        self.generator = torch.Generator().manual_seed(args.seed)  # shared: ranks keep their rows

    def loss(self, model):
        idx = torch.randint(len(self.train), (self.batch_size,), generator=self.generator)
        # Normalised by the whole batch's words (+ EOS each): the ranks' shares sum to its mean.
        n_words = sum(len(self.train.captions[i]) + 1 for i in idx)
        idx = idx[self.dist.shard(self.batch_size)]
        tgt_in, tgt = encode_captions(self.vocab, [self.train.captions[i] for i in idx], self.device)
        logits, attn = model(self.train.images[idx].to(self.device), tgt_in)
        ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=PAD,
                                               reduction="sum") / n_words
        if attn is None or not self.penalty:
            return ce, {}
        # Show, Attend and Tell's doubly stochastic penalty: over a caption, every cell's
        # attention should sum to about one, so no region is ignored all along.
        real = (tgt != PAD).unsqueeze(-1)
        coverage = (attn * real).sum(0)
        expected = real.sum(0).float() / attn.shape[-1]
        penalty = self.dist.share(((expected - coverage) ** 2).sum(-1).mean())
        return ce + self.penalty * penalty, {"ce": ce.item()}

    def evaluate(self, model):
        return evaluate_scenes(model, self.vocab, self.val, self.device)

    def final(self, model):
        metrics = {f"unseen_{k}": v for k, v in
                   evaluate_scenes(model, self.vocab, self.unseen, self.device).items()}
        if self.beam > 1:
            beam = evaluate_scenes(model, self.vocab, self.val, self.device, beam=self.beam)
            metrics |= {f"beam{self.beam}_{k}": v for k, v in beam.items() if k != "grounding"}
        return metrics

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])


def resolve_defaults(args):
    """The settings that depend on --attention. Soft attention defaults to local features
    (3x3 then 1x1 convolutions), cell coordinates and the where-only feed: every word must
    then look at what it names, which is what the grounding score measures. The pooled
    feature of "none" needs 3x3 convolutions throughout to see a shape whole."""
    soft = args.attention == "soft"
    n = len(args.channels)
    args.kernels = args.kernels or ([3] + [1] * (n - 1) if soft else [3] * n)
    args.coords = soft if args.coords is None else args.coords
    args.feed = args.feed or ("where" if soft else "context")


def train_captioner(args):
    device = loop.setup(args)
    resolve_defaults(args)
    vocab = TokenVocab(WORDS)
    model = Captioner(len(vocab), attention=args.attention, image_size=args.image_size,
                      channels=args.channels, pools=args.pools,
                      kernels=args.kernels, coords=args.coords, feed=args.feed, embed=args.embed, hidden=args.hidden,
                      attn_dim=args.attn_dim, impl=args.impl).to(device)
    run = loop.open_run(args, "captioner", args.attention)
    task = CaptionTask(args, vocab, device)
    return loop.fit(args, run, model, task, vocab)
