"""Seq2Seq with additive (Bahdanau) attention: a bidirectional LSTM encoder, an LSTMCell
decoder that recomputes the attention context from its previous state at every step,
teacher forcing for training, greedy and beam-search decoding."""
import torch

from .layers import layers_for

PAD, BOS, EOS = 0, 1, 2


class AdditiveAttention(torch.nn.Module):
    """score(s, h_j) = v . tanh(W_enc h_j + W_dec s); padded source positions masked."""

    def __init__(self, nn, enc_dim, dec_dim, attn_dim):
        super().__init__()
        self.enc_proj = nn.Linear(enc_dim, attn_dim, bias=False)
        self.dec_proj = nn.Linear(dec_dim, attn_dim)
        self.score = nn.Linear(attn_dim, 1, bias=False)

    def forward(self, dec_state, enc_out, enc_keys, src_mask):
        """dec_state (B, H); enc_out (S, B, E); enc_keys = enc_proj(enc_out) precomputed
        once per sequence; src_mask (S, B) True at real tokens -> context (B, E), weights (B, S)."""
        scores = self.score(torch.tanh(enc_keys + self.dec_proj(dec_state))).squeeze(-1)  # (S, B)
        weights = scores.masked_fill(~src_mask, float("-inf")).softmax(0)
        context = (weights.unsqueeze(-1) * enc_out).sum(0)
        return context, weights.t()


class Seq2Seq(torch.nn.Module):
    kind = "seq2seq"

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, embed: int = 32,
                 hidden: int = 64, attn_dim: int = 64, impl: str = "fastseq"):
        super().__init__()
        nn, _ = layers_for(impl)
        self.config = dict(src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size,
                           embed=embed, hidden=hidden, attn_dim=attn_dim, impl=impl)
        self.src_embed = nn.Embedding(src_vocab_size, embed, padding_idx=PAD)
        self.encoder = nn.LSTM(embed, hidden, bidirectional=True)
        self.init_state = nn.Linear(2 * hidden, 2 * hidden)
        self.attention = AdditiveAttention(nn, 2 * hidden, hidden, attn_dim)
        self.tgt_embed = nn.Embedding(tgt_vocab_size, embed, padding_idx=PAD)
        self.decoder = nn.LSTMCell(embed + 2 * hidden, hidden)
        self.out = nn.Linear(hidden + 2 * hidden + embed, tgt_vocab_size)

    def encode(self, src):
        """src (S, B) -> memory: encoder outputs, attention keys, mask, first decoder state."""
        src_mask = src != PAD
        enc_out, _ = self.encoder(self.src_embed(src))
        enc_out = enc_out * src_mask.unsqueeze(-1)
        mean = enc_out.sum(0) / src_mask.sum(0, keepdim=True).t().clamp(min=1)
        h0, c0 = torch.tanh(self.init_state(mean)).chunk(2, dim=-1)
        return enc_out, self.attention.enc_proj(enc_out), src_mask, (h0.contiguous(), c0.contiguous())

    def step(self, prev_tokens, state, memory):
        """One decoder step: attend with the previous state, feed [embedding, context] to
        the cell -> logits (B, V), new state, attention weights (B, S)."""
        enc_out, enc_keys, src_mask = memory
        context, weights = self.attention(state[0], enc_out, enc_keys, src_mask)
        emb = self.tgt_embed(prev_tokens)
        h, c = self.decoder(torch.cat([emb, context], -1), state)
        logits = self.out(torch.cat([h, context, emb], -1))
        return logits, (h, c), weights

    def forward(self, src, tgt_in):
        """Teacher forcing: tgt_in (T, B) starts with BOS -> logits (T, B, V)."""
        enc_out, enc_keys, src_mask, state = self.encode(src)
        memory = (enc_out, enc_keys, src_mask)
        logits = []
        for t in range(tgt_in.shape[0]):
            step_logits, state, _ = self.step(tgt_in[t], state, memory)
            logits.append(step_logits)
        return torch.stack(logits)

    @torch.no_grad()
    def greedy(self, src, max_len: int):
        """src (S, B) -> tokens (B, <=max_len) without BOS, attention (B, T, S)."""
        enc_out, enc_keys, src_mask, state = self.encode(src)
        memory = (enc_out, enc_keys, src_mask)
        prev = torch.full((src.shape[1],), BOS, dtype=torch.long, device=src.device)
        tokens, attn = [], []
        done = torch.zeros_like(prev, dtype=torch.bool)
        for _ in range(max_len):
            logits, state, weights = self.step(prev, state, memory)
            prev = logits.argmax(-1).masked_fill(done, PAD)
            tokens.append(prev)
            attn.append(weights)
            done |= prev == EOS
            if done.all():
                break
        return torch.stack(tokens, 1), torch.stack(attn, 1)

    @torch.no_grad()
    def beam_search(self, src, beam: int, max_len: int):
        """One source sentence src (S, 1) -> best tokens (list, without BOS/EOS), its
        attention (T, S) and log-probability. Hypotheses are ranked by total log-prob;
        finished ones (EOS) are kept aside."""
        enc_out, enc_keys, src_mask, state = self.encode(src)
        hyps = [([], 0.0, state, [])]  # (tokens, logp, state, attention rows)
        finished = []
        for _ in range(max_len):
            k = len(hyps)
            prev = torch.tensor([h[0][-1] if h[0] else BOS for h in hyps], device=src.device)
            h = torch.cat([hy[2][0] for hy in hyps]), torch.cat([hy[2][1] for hy in hyps])
            memory = (enc_out.expand(-1, k, -1), enc_keys.expand(-1, k, -1), src_mask.expand(-1, k))
            logits, (h, c), weights = self.step(prev, h, memory)
            logp = logits.log_softmax(-1)
            scores = torch.tensor([hy[1] for hy in hyps], device=src.device)[:, None] + logp
            top_scores, top_index = scores.flatten().topk(min(beam, scores.numel()))
            candidates = []
            for score, index in zip(top_scores.tolist(), top_index.tolist()):
                row, token = divmod(index, logp.shape[1])
                tokens, attn = hyps[row][0] + [token], hyps[row][3] + [weights[row]]
                entry = (tokens, score, (h[row:row + 1], c[row:row + 1]), attn)
                (finished if token == EOS else candidates).append(entry)
            hyps = candidates
            if not hyps or (finished and max(f[1] for f in finished) > max(hy[1] for hy in hyps)):
                break  # log-probs only fall: no open hypothesis can beat the best finished one
        pool = finished or hyps
        best = max(pool, key=lambda hy: hy[1])
        tokens = [t for t in best[0] if t != EOS]
        return tokens, torch.stack(best[3]), best[1]
