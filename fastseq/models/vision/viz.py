"""Pictures of the vision models (PNG, matplotlib's Agg canvas via models.viz): loss and
metric curves from a run's history, a caption's attention row, RAM's glimpse paths."""
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..viz import _save

GLIMPSE_COLOURS = ("#e41a1c", "#ff7f00", "#4daf4a", "#377eb8", "#984ea3", "#a65628", "#f781bf", "#999999")


def plot_curves(history, path, title=""):
    """history: metrics entries {"step", "loss", ...} -> the per-step training losses on the
    left (thin, with a running mean), the evaluation metrics (the keys only some entries
    have) on the right."""
    fig = Figure(figsize=(10, 3.5))
    loss_ax, metric_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    every = set.intersection(*(set(h) for h in history)) if history else set()
    for name in ("loss", "ce"):
        points = [(h["step"], h[name]) for h in history if name in h]
        if not points:
            continue
        steps, values = np.array(points).T
        line, = loss_ax.plot(steps, values, linewidth=0.5, alpha=0.5)
        window = max(1, len(values) // 50)
        if window > 1:
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            loss_ax.plot(steps[window - 1:], smooth, color=line.get_color(), label=f"{name} (mean of {window})")
        else:
            line.set_label(name)
    for name in sorted({k for h in history for k in h} - every):
        points = [(h["step"], h[name]) for h in history if name in h]
        metric_ax.plot(*zip(*points), "o-" if len(points) < 30 else "-", label=name, markersize=3)
    for ax, label in ((loss_ax, "training loss"), (metric_ax, "evaluation")):
        ax.set_xlabel("step")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, path)


def plot_caption_attention(image, words, attention, grid, path, title=""):
    """image (3, S, S); words: the generated words; attention (T, N) over the grid -> the
    image, then one panel per word with its attention map upsampled over the image."""
    picture = np.clip(np.asarray(image).transpose(1, 2, 0), 0, 1)
    size = picture.shape[0]
    panels = len(words) + 1
    fig = Figure(figsize=(1.6 * panels, 1.9))
    ax = fig.add_subplot(1, panels, 1)
    ax.imshow(picture)
    ax.set_title("image", fontsize=8)
    ax.axis("off")
    for t, word in enumerate(words):
        ax = fig.add_subplot(1, panels, t + 2)
        ax.imshow(picture * 0.6)
        heat = np.asarray(attention[t]).reshape(grid, grid)
        ax.imshow(heat, cmap="magma", alpha=0.6, extent=(-0.5, size - 0.5, size - 0.5, -0.5),
                  interpolation="bilinear", vmin=0, vmax=max(float(heat.max()), 1e-6))
        ax.set_title(word, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    _save(fig, path)


def plot_glimpses(canvases, locations, patch, scales, predictions, labels, path):
    """canvases (B, 1, H, W), locations (B, G, 2) in [-1, 1] -> a canvas per panel with the
    glimpse path (numbered), each glimpse's finest patch (solid) and the first glimpse's
    coarser patches (dashed)."""
    b, _, h, w = canvases.shape
    fig = Figure(figsize=(2.4 * b, 2.7))
    for i in range(b):
        ax = fig.add_subplot(1, b, i + 1)
        ax.imshow(np.asarray(canvases[i, 0]), cmap="gray", vmin=0, vmax=1)
        ys = (locations[i, :, 0].numpy() + 1) / 2 * h - 0.5
        xs = (locations[i, :, 1].numpy() + 1) / 2 * w - 0.5
        ax.plot(xs, ys, "-", color="#ffcc00", linewidth=1)
        for g, (x, y) in enumerate(zip(xs, ys)):
            colour = GLIMPSE_COLOURS[g % len(GLIMPSE_COLOURS)]
            # Every glimpse's finest patch; the coarser ones of the first glimpse only
            # (they overlap so much that drawing all would hide the canvas).
            for k in range(scales if g == 0 else 1):
                side = patch * 2 ** k
                ax.add_patch(Rectangle((x - side / 2, y - side / 2), side, side, fill=False,
                                       edgecolor=colour, linewidth=1.2 if k == 0 else 0.6,
                                       linestyle="-" if k == 0 else "--"))
            ax.text(x, y, str(g + 1), color="white", fontsize=7, ha="center", va="center",
                    bbox=dict(boxstyle="circle,pad=0.15", fc=colour, ec="none"))
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_title(f"label {labels[i]}, predicted {predictions[i]}", fontsize=8)
        ax.axis("off")
    _save(fig, path)
