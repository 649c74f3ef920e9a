"""Caption scores: corpus BLEU-4 (Papineni et al. 2002), exact match, and grounding (the
share of object words whose attention peak falls on the pixels of the object they name)."""
import math
from collections import Counter


def _ngrams(words, n):
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def corpus_bleu(hypotheses, references, max_n=4):
    """hypotheses: list of word lists; references: list of lists of reference word lists.

    Standard corpus BLEU: clipped n-gram counts summed over the corpus before the
    precisions are taken (not an average of sentence scores), uniform weights over
    n = 1..4, brevity penalty from the reference length closest to each hypothesis.
    0 when some order has no match at all (no smoothing)."""
    matches, totals = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for hyp, refs in zip(hypotheses, references):
        hyp_len += len(hyp)
        ref_len += min((abs(len(r) - len(hyp)), len(r)) for r in refs)[1]
        for n in range(1, max_n + 1):
            counts = _ngrams(hyp, n)
            best = Counter()
            for ref in refs:
                best |= _ngrams(ref, n)
            matches[n - 1] += sum(min(c, best[g]) for g, c in counts.items())
            totals[n - 1] += max(0, len(hyp) - n + 1)
    if hyp_len == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_n
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return brevity * math.exp(log_precision)


def exact_match(hypotheses, references):
    return sum(h == r for h, r in zip(hypotheses, references)) / max(1, len(references))


def grounding_hits(attention, masks, word_objects, grid):
    """attention (T, N) for one caption; masks (k, S, S) bool; word_objects: per word the
    object index or -1. -> (hits, object words). A peak cell counts as on the object when
    any of the cell's pixels belongs to it."""
    size = masks.shape[-1]
    cell = size // grid
    hits = total = 0
    for t, obj in enumerate(word_objects):
        if obj < 0 or t >= attention.shape[0]:
            continue
        peak = int(attention[t].argmax())
        row, col = divmod(peak, grid)
        total += 1
        hits += bool(masks[obj][row * cell:(row + 1) * cell, col * cell:(col + 1) * cell].any())
    return hits, total
