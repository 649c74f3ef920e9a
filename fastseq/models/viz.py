"""Pictures: the loss curve, attention heatmaps (seq2seq source vs output, GPT heads) as
PNG via matplotlib's Agg canvas (no display needed), and text coloured by one LSTM unit
as HTML."""
import html
import os

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _save(fig, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def plot_loss(history, path, title="training loss"):
    """Train loss per step and validation loss; exact match (seq2seq) on a second axis."""
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    train = history["train"]
    if train:
        steps, losses = zip(*train)
        ax.plot(steps, losses, color="#9ecae1", linewidth=0.8, label="train (per step)")
        window = max(1, len(losses) // 50)
        if window > 1:
            smooth = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
                      for i in range(len(losses))]
            ax.plot(steps, smooth, color="#3182bd", linewidth=1.5, label=f"train (mean of {window})")
    val_steps = [s for s, _ in history["val"]]
    if history["val"]:
        ax.plot(val_steps, [m["val_loss"] for _, m in history["val"]], "o-", color="#e6550d", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    losses = [v for _, v in train] + [m["val_loss"] for _, m in history["val"]]
    if losses and min(losses) > 0 and max(losses) / min(losses) > 20:
        ax.set_yscale("log")  # seq2seq falls from ~3 to ~0.001: on a linear axis the end is a flat line
    handles, labels = ax.get_legend_handles_labels()
    if any("exact_match" in m for _, m in history["val"]):
        right = ax.twinx()
        right.plot(val_steps, [m["exact_match"] for _, m in history["val"]], "s--", color="#31a354",
                   label="exact match (validation)")
        right.set_ylim(0, 1.02)
        right.set_ylabel("exact match")
        more = right.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(handles, labels, fontsize=8)
    _save(fig, path)
    return fig


def plot_seq2seq_attention(weights, source_tokens, output_tokens, path, title=""):
    """weights (T_out, S) -> heatmap, source along x, output along y."""
    fig = Figure(figsize=(max(4, 0.45 * len(source_tokens) + 1.5), max(3, 0.35 * len(output_tokens) + 1.2)))
    ax = fig.add_subplot()
    image = ax.imshow(weights, cmap="viridis", aspect="auto", vmin=0, vmax=1)
    ax.set_xticks(range(len(source_tokens)), source_tokens, rotation=60, ha="right")
    ax.set_yticks(range(len(output_tokens)), output_tokens)
    ax.set_xlabel("source")
    ax.set_ylabel("output")
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.04)
    _save(fig, path)


def plot_gpt_attention(weights, tokens, path, title=""):
    """weights: list over layers of (heads, T, T) -> a layers x heads grid of heatmaps."""
    layers, heads = len(weights), weights[0].shape[0]
    labels = [repr(t)[1:-1] for t in tokens]
    size = max(2.6, 0.16 * len(tokens))
    fig = Figure(figsize=(size * heads + 1.2, size * layers + 0.6))
    axes = fig.subplots(layers, heads, squeeze=False)
    show = len(tokens) <= 40
    for layer, layer_weights in enumerate(weights):
        for head in range(heads):
            ax = axes[layer][head]
            image = ax.imshow(layer_weights[head], cmap="viridis", vmin=0, vmax=1)
            ax.set_title(f"layer {layer} head {head}", fontsize=10)
            ax.set_xticks(range(len(tokens)) if show else [], labels if show else [], fontsize=8)
            ax.set_yticks(range(len(tokens)) if show else [], labels if show else [], fontsize=8)
            if head == 0:
                ax.set_ylabel("query (reading)", fontsize=9)
            if layer == layers - 1:
                ax.set_xlabel("key (attended to)", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout(rect=(0, 0, 0.93, 1))
    # One colorbar for every head: they share the 0..1 scale.
    fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.02, pad=0.02, label="attention weight")
    _save(fig, path)


def unit_rgb(value: float):
    """-1 -> blue, 0 -> white, +1 -> red, as 0..255 (r, g, b)."""
    v = max(-1.0, min(1.0, float(value)))
    fade = int(255 * (1 - abs(v)))
    return (255, fade, fade) if v > 0 else (fade, fade, 255)


def unit_colour(value: float) -> str:
    return "rgb({},{},{})".format(*unit_rgb(value))


def coloured_text_png(panels, path, width=80, max_lines=12):
    """panels: list of (caption, text, values) -> one PNG, each text drawn in a monospace
    grid on its unit's colours (the same view as the HTML, for docs and slides)."""
    from matplotlib.patches import Rectangle

    grids = []
    for caption, text, values in panels:
        cells, row, col = [], 0, 0
        for ch, v in zip(text, values):
            if row >= max_lines:
                break
            cells.append((row, col, "↵" if ch == "\n" else ch, v))
            col += 1
            if ch == "\n" or col >= width:
                row, col = row + 1, 0
        grids.append((caption, cells, min(row + 1, max_lines)))
    total_rows = sum(rows + 2 for _, _, rows in grids) + 2  # + the colour legend
    fig = Figure(figsize=(width * 0.085, total_rows * 0.17))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, width)
    ax.set_ylim(total_rows, 0)
    ax.axis("off")
    top = 0
    for caption, cells, rows in grids:
        ax.text(0, top + 1, caption, fontsize=8, fontweight="bold", va="bottom")
        for row, col, ch, v in cells:
            y = top + 1.2 + row
            ax.add_patch(Rectangle((col, y), 1, 1, color=[c / 255 for c in unit_rgb(v)], linewidth=0))
            ax.text(col + 0.5, y + 0.55, ch, fontsize=7, family="monospace", ha="center", va="center")
        top += rows + 2
    # The legend, as in the HTML page: what the colours mean.
    ax.text(0, top + 1, "unit value:", fontsize=8, va="bottom")
    for i, value in enumerate([-1, -0.5, 0, 0.5, 1]):
        x = 8 + 7 * i
        ax.add_patch(Rectangle((x, top + 0.2), 2, 1, color=[c / 255 for c in unit_rgb(value)], ec="#999"))
        ax.text(x + 2.4, top + 1, f"{value:+g}", fontsize=8, va="bottom")
    _save(fig, path)


def coloured_text_html(text, values):
    """One <pre> block: each character on the background of its unit's value."""
    spans = []
    for ch, v in zip(text, values):
        shown = "↵\n" if ch == "\n" else html.escape(ch)
        spans.append(f'<span style="background:{unit_colour(v)}" title="{float(v):+.2f}">{shown}</span>')
    return "<pre class=\"cells\">" + "".join(spans) + "</pre>"


def cells_page(title, sections):
    """sections: list of (heading, description, html block)."""
    body = [f"<h1>{html.escape(title)}</h1>",
            "<p>Each character's background is one LSTM hidden unit's value after reading it: "
            "<span style=\"background:rgb(0,0,255);color:white\">blue = -1</span>, white = 0, "
            "<span style=\"background:rgb(255,0,0);color:white\">red = +1</span>. "
            "Hover a character to read the value.</p>"]
    for heading, description, block in sections:
        body.append(f"<h2>{html.escape(heading)}</h2><p>{html.escape(description)}</p>{block}")
    return ("<!doctype html><html><head><meta charset=\"utf-8\"><title>" + html.escape(title) +
            "</title><style>body{font-family:sans-serif;max-width:70em;margin:auto}"
            "pre.cells{font-family:monospace;font-size:13px;line-height:1.5;white-space:pre-wrap;"
            "border:1px solid #ddd;padding:.5em}</style></head><body>" + "\n".join(body) +
            "</body></html>\n")
