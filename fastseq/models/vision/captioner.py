"""Image captioner ("one to many"): a small CNN encoder and an LSTMCell decoder. With
attention "none" the pooled CNN feature initialises the decoder and is all it sees; with
"soft" the decoder also attends over the CNN's grid of features at every word (additive
attention recomputed from its previous state, Show, Attend and Tell), optionally with
each cell's coordinates in its feature and an LSTM that reads only where it looked (see
`feed`). Teacher forcing for training; greedy, sampled and beam-search decoding."""
import torch

from ..layers import layers_for
from ..seq2seq import BOS, EOS, PAD, AdditiveAttention
from .encoder import ConvEncoder

ATTENTIONS = ("none", "soft")
FEEDS = ("context", "where")


class Captioner(torch.nn.Module):
    kind = "captioner"

    def __init__(self, vocab_size: int, attention: str = "soft", image_size: int = 32,
                 channels=(32, 64, 64), pools: int = 2, kernels=None, coords: bool = False, feed: str = "context", embed: int = 32, hidden: int = 128, attn_dim: int = 64,
                 impl: str = "fastseq"):
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"--attention: expected one of {ATTENTIONS}, got {attention!r}")
        if pools > len(channels):
            raise ValueError(f"--pools: expected at most one per CNN block ({len(channels)}), got {pools}")
        if image_size % 2 ** pools or image_size < 2 ** (pools + 1):
            raise ValueError(f"--image-size: expected a multiple of {2 ** pools} (2**pools), at least "
                             f"{2 ** (pools + 1)}, got {image_size}")
        if feed not in FEEDS or (feed == "where" and not (coords and attention == "soft")):
            raise ValueError(f"--feed: expected one of {FEEDS} ('where' needs --attention soft and "
                             f"--coords), got {feed!r}")
        nn, _ = layers_for(impl)
        self.config = dict(vocab_size=vocab_size, attention=attention, image_size=image_size,
                           channels=list(channels), pools=pools,
                           kernels=list(kernels) if kernels else None, coords=coords, feed=feed, embed=embed, hidden=hidden, attn_dim=attn_dim,
                           impl=impl)
        self.attention_kind = attention
        # Each pool halves the grid: two turn a 32x32 scene into 8x8 cells of 4x4 pixels.
        self.encoder = ConvEncoder(3, channels, pools=pools, impl=impl, kernels=kernels)
        self.grid = image_size // 2 ** pools
        # coords: each cell's (y, x) in [-1, 1] joins its feature, so attention can pick
        # cells by place ("the next object to the right") and not only by content.
        self.coords = coords
        feat = self.encoder.out_channels + (2 if coords else 0)
        self.embed = nn.Embedding(vocab_size, embed, padding_idx=PAD)
        context = feat if attention == "soft" else 0
        if attention == "soft":
            self.attention = AdditiveAttention(nn, feat, hidden, attn_dim)
        # feed "context": the LSTM reads the whole attended feature (Show, Attend and Tell).
        # feed "where": it reads only the attended place (the coordinates' weighted mean)
        # and starts from a blank state, so what an object looks like reaches a word only
        # through that word's own attention: the words must look at what they name.
        self.feed = feed
        self.hidden = hidden
        if feed == "context":
            self.init_state = nn.Linear(self.encoder.out_channels, 2 * hidden)
        self.decoder = nn.LSTMCell(embed + (2 if feed == "where" else context), hidden)
        self.out = nn.Linear(hidden + context + embed, vocab_size)

    def encode(self, images):
        """images (B, 3, S, S) -> memory (features (N, B, C), keys or None), first state."""
        feats = self.encoder(images).flatten(2).permute(2, 0, 1)  # (N, B, C), N = grid cells
        if self.feed == "where":
            h0 = c0 = feats.new_zeros(feats.shape[1], self.hidden)
        else:
            h0, c0 = torch.tanh(self.init_state(feats.mean(0))).chunk(2, dim=-1)
        if self.coords:
            axis = torch.linspace(-1, 1, self.grid, device=images.device, dtype=feats.dtype)
            yx = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 1, 2)
            feats = torch.cat([feats, yx.expand(-1, feats.shape[1], -1)], -1)
        keys = self.attention.enc_proj(feats) if self.attention_kind == "soft" else None
        return (feats, keys), (h0.contiguous(), c0.contiguous())

    def step(self, prev_tokens, state, memory):
        """One word: logits (B, V), new state, attention over the grid (B, N) or None."""
        feats, keys = memory
        emb = self.embed(prev_tokens)
        if self.attention_kind == "soft":
            mask = torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device)
            context, weights = self.attention(state[0], feats, keys, mask)
            read = context[:, -2:] if self.feed == "where" else context
            h, c = self.decoder(torch.cat([emb, read], -1), state)
            return self.out(torch.cat([h, context, emb], -1)), (h, c), weights
        h, c = self.decoder(emb, state)
        return self.out(torch.cat([h, emb], -1)), (h, c), None

    def forward(self, images, tgt_in):
        """Teacher forcing: tgt_in (T, B) from BOS -> logits (T, B, V), attention (T, B, N) or None."""
        memory, state = self.encode(images)
        logits, attn = [], []
        for t in range(tgt_in.shape[0]):
            step_logits, state, weights = self.step(tgt_in[t], state, memory)
            logits.append(step_logits)
            attn.append(weights)
        return torch.stack(logits), (torch.stack(attn) if attn[0] is not None else None)

    @torch.no_grad()
    def decode(self, images, max_len: int, temperature: float = 0.0, generator=None):
        """Greedy (temperature 0) or sampled captions -> tokens (B, <=max_len) padded after
        EOS, attention (B, T, N) or None. Sampling draws from `generator` (a CPU
        torch.Generator) so a seed reproduces it."""
        memory, state = self.encode(images)
        prev = torch.full((images.shape[0],), BOS, dtype=torch.long, device=images.device)
        done = torch.zeros_like(prev, dtype=torch.bool)
        tokens, attn = [], []
        for _ in range(max_len):
            logits, state, weights = self.step(prev, state, memory)
            if temperature > 0:
                probs = (logits.float() / temperature).softmax(-1).cpu()
                prev = torch.multinomial(probs, 1, generator=generator)[:, 0].to(images.device)
            else:
                prev = logits.argmax(-1)
            prev = prev.masked_fill(done, PAD)
            tokens.append(prev)
            attn.append(weights)
            done |= prev == EOS
            if done.all():
                break
        return torch.stack(tokens, 1), (torch.stack(attn, 1) if attn[0] is not None else None)

    @torch.no_grad()
    def beam_search(self, image, beam: int, max_len: int):
        """One image (1, 3, S, S) -> best tokens (without EOS), attention (T, N) or None, and
        its log-probability. All open hypotheses advance as one batch; finished ones wait
        aside until no open one can beat them (log-probabilities only fall)."""
        (feats, keys), state = self.encode(image)
        hyps = [([], 0.0, state, [])]
        finished = []
        for _ in range(max_len):
            k = len(hyps)
            prev = torch.tensor([hy[0][-1] if hy[0] else BOS for hy in hyps], device=image.device)
            state = torch.cat([hy[2][0] for hy in hyps]), torch.cat([hy[2][1] for hy in hyps])
            memory = (feats.expand(-1, k, -1), keys.expand(-1, k, -1) if keys is not None else None)
            logits, (h, c), weights = self.step(prev, state, memory)
            scores = torch.tensor([hy[1] for hy in hyps], device=image.device)[:, None] + logits.log_softmax(-1)
            top_scores, top_index = scores.flatten().topk(min(beam, scores.numel()))
            candidates = []
            for score, index in zip(top_scores.tolist(), top_index.tolist()):
                row, token = divmod(index, logits.shape[1])
                attn = hyps[row][3] + ([weights[row]] if weights is not None else [])
                entry = (hyps[row][0] + [token], score, (h[row:row + 1], c[row:row + 1]), attn)
                (finished if token == EOS else candidates).append(entry)
            hyps = candidates
            if not hyps or (finished and max(f[1] for f in finished) > max(hy[1] for hy in hyps)):
                break
        best = max(finished or hyps, key=lambda hy: hy[1])
        tokens = [t for t in best[0] if t != EOS]
        attention = torch.stack(best[3])[: len(tokens)] if best[3] else None
        return tokens, attention, best[1]
