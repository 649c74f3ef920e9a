"""Captioned shape scenes, generated: 1-3 coloured shapes on a small dark canvas, the
caption naming them left to right ("a red circle left of a blue square"), and a pixel mask
per object for the grounding score. A held-out set of colour-shape combinations (never
drawn in training) measures compositional generalisation."""
import numpy as np
import torch

COLOURS = {"red": (1.0, 0.15, 0.15), "green": (0.15, 0.9, 0.2), "blue": (0.2, 0.35, 1.0),
           "yellow": (1.0, 0.9, 0.1)}
SHAPES = ("circle", "square", "triangle")
# One unseen pair per colour, each shape held out at least once: the model has seen every
# colour and every shape, never these pairings.
UNSEEN = (("red", "triangle"), ("green", "circle"), ("blue", "square"), ("yellow", "triangle"))
WORDS = ["a", "left", "of", *COLOURS, *SHAPES]


def caption_words(objects):
    """objects [(colour, shape, ...)] sorted left to right -> list of words."""
    words = []
    for i, (colour, shape, *_) in enumerate(objects):
        words += (["left", "of"] if i else []) + ["a", colour, shape]
    return words


def object_of_word(objects):
    """Per caption word, the index of the object it names (colour and shape words), else -1."""
    index = []
    for i in range(len(objects)):
        index += ([-1, -1] if i else []) + [-1, i, i]
    return index


def _shape_mask(shape, cy, cx, r, size):
    y, x = np.mgrid[:size, :size] + 0.5
    if shape == "circle":
        return (y - cy) ** 2 + (x - cx) ** 2 <= r * r
    if shape == "square":
        return (abs(y - cy) <= r * 0.85) & (abs(x - cx) <= r * 0.85)
    # Upward triangle: apex at the top, base at the bottom, filled between the two sides.
    top, bottom = cy - r, cy + r
    half = (y - top) / (2 * r) * r
    return (y >= top) & (y <= bottom) & (abs(x - cx) <= half)


def make_scene(rng, size, combos):
    """One scene: image (3, size, size) float32, caption words, masks (n, size, size) bool."""
    n = int(rng.integers(1, 4))
    # Objects sit in distinct thirds of the width, so "left of" is never ambiguous and
    # shapes never overlap; y and the radius jitter freely.
    slots = np.sort(rng.choice(3, n, replace=False))
    objects = []
    third = size / 3
    for slot in slots:
        colour, shape = combos[int(rng.integers(len(combos)))]
        r = rng.uniform(0.10, 0.13) * size
        cx = third * slot + third / 2 + rng.uniform(-0.04, 0.04) * size
        cy = rng.uniform(r + 1, size - r - 1)
        objects.append((colour, shape, _shape_mask(shape, cy, cx, r, size)))
    image = np.zeros((3, size, size), np.float32) + rng.uniform(0, 0.08, (3, 1, 1)).astype(np.float32)
    for colour, _, mask in objects:
        image[:, mask] = np.array(COLOURS[colour], np.float32)[:, None]
    image += rng.normal(0, 0.03, image.shape).astype(np.float32)
    return image, caption_words(objects), np.stack([m for *_, m in objects])


def combos_for(split):
    everything = [(c, s) for c in COLOURS for s in SHAPES]
    if split == "unseen":
        return list(UNSEEN)
    return [pair for pair in everything if pair not in UNSEEN]


class ShapeScenes:
    """A fixed set of n scenes: images (n, 3, S, S), captions (lists of words), masks (lists
    of (k, S, S) bool arrays). split "train"/"val" draw the seen combinations, "unseen" only
    the held-out ones (so every object in those scenes is a new pairing)."""

    def __init__(self, n, size=32, split="train", seed=0):
        rng = np.random.default_rng([seed, ("train", "val", "unseen").index(split)])
        scenes = [make_scene(rng, size, combos_for(split)) for _ in range(n)]
        self.images = torch.from_numpy(np.stack([s[0] for s in scenes]))
        self.captions = [s[1] for s in scenes]
        self.masks = [s[2] for s in scenes]
        self.size = size

    def __len__(self):
        return len(self.captions)
