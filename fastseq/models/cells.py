"""Interpretable LSTM units: run a CharLM over text, score every hidden unit by how well
its value tracks simple per-character features (inside quotes, inside a comment,
position in the line), and render the best units as coloured text."""
import torch

from .viz import cells_page, coloured_text_html, coloured_text_png


def text_features(text):
    """Per-character features (floats, one per character, the state after reading it).

    inside quotes: between an opening and closing ' or " (a Python string; in prose, a
    quotation); inside a comment: from # to the end of the line, outside quotes;
    position in line: characters since the last newline, scaled to [0, 1] by the longest
    line; also indentation depth and bracket depth, two things code models famously track.
    """
    in_quote, in_comment, position, indent, brackets = [], [], [], [], []
    quote, comment, skip = None, False, 0
    column, line_indent, depth, at_line_start = 0, 0, 0, True
    for i, ch in enumerate(text):
        if ch == "\n":
            comment, column, at_line_start, line_indent = False, 0, True, 0
            if quote is not None and len(quote) == 1:
                quote = None  # an unclosed '...' ends with its line; only triple quotes span lines
        else:
            column += 1
            if at_line_start and ch == " ":
                line_indent += 1
            else:
                at_line_start = False
            if skip:
                skip -= 1  # the rest of a triple quote already handled
            elif comment:
                pass
            elif quote:
                if text.startswith(quote, i) and text[i - 1] != "\\":
                    quote, skip = None, len(quote) - 1
            elif ch in "\"'":
                quote = text[i:i + 3] if text.startswith(ch * 3, i) else ch
                skip = len(quote) - 1
            elif ch == "#":
                comment = True
            elif ch in "([{":
                depth += 1
            elif ch in ")]}":
                depth = max(0, depth - 1)
        in_quote.append(1.0 if quote or skip else 0.0)
        in_comment.append(1.0 if comment else 0.0)
        position.append(float(column))
        indent.append(float(line_indent))
        brackets.append(float(depth))
    longest = max(position) or 1.0
    return {
        "inside quotes": in_quote,
        "inside a comment": in_comment,
        "position in line": [p / longest for p in position],
        "indentation": indent,
        "bracket depth": brackets,
    }


def correlations(activations, feature):
    """activations (T, H), feature (T,) -> Pearson correlation of each unit (H,)."""
    a = activations - activations.mean(0)
    f = feature - feature.mean()
    denom = a.norm(dim=0) * f.norm()
    return (a * f[:, None]).sum(0) / denom.clamp(min=1e-12)


@torch.no_grad()
def unit_activations(model, vocab, text, layer=-1):
    """Hidden values (T, H) of one layer of the CharLM while it reads text."""
    device = next(model.parameters()).device
    tokens = vocab.encode(text, "--data").to(device)[:, None]
    states = model.hidden_states(tokens)  # (layers, T, 1, H)
    return states[layer, :, 0].float().cpu()


def rank_units(activations, text, top=3):
    """{feature: [(unit, correlation), ...]} best |correlation| first; features that are
    constant over this text (no quotes at all, say) are left out."""
    ranking = {}
    for name, values in text_features(text).items():
        feature = torch.tensor(values)
        if feature.std() == 0:
            continue
        corr = correlations(activations, feature)
        order = corr.abs().argsort(descending=True)[:top]
        ranking[name] = [(int(u), float(corr[u])) for u in order]
    return ranking


def cells_report(model, vocab, text, layer=-1, top=3, title="LSTM cells", png=None, png_chars=600):
    """(HTML page, ranking) for the best units of each feature; with png, also a picture
    of the single best unit per feature over the first png_chars characters."""
    activations = unit_activations(model, vocab, text, layer)
    ranking = rank_units(activations, text, top)
    if png:
        coloured_text_png([(f"{feature}: unit {units[0][0]} (correlation {units[0][1]:+.2f})",
                            text[:png_chars], activations[:png_chars, units[0][0]].tolist())
                           for feature, units in ranking.items()], png)
    sections = []
    for feature, units in ranking.items():
        for unit, corr in units:
            sections.append((f"{feature}: unit {unit} (correlation {corr:+.2f})",
                             f"layer {layer if layer >= 0 else model.lstm.num_layers + layer}, "
                             f"hidden unit {unit}",
                             coloured_text_html(text, activations[:, unit].tolist())))
    return cells_page(title, sections), ranking
