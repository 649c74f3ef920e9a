"""Digits on larger canvases, as the RAM paper's translated and cluttered MNIST, from
scikit-learn's bundled handwritten digits (load_digits: 1797 8x8 images shipped inside
the package, so nothing is downloaded). Each digit is upscaled to 24x24 and pasted at a
random place on a 60x60 canvas; "cluttered" adds 8x8 fragments of other digits."""
import numpy as np
import torch
import torch.nn.functional as F

CANVASES = ("translated", "cluttered")


def load_digit_images(scale=3):
    """(images (N, 8*scale, 8*scale) float32 in [0, 1], labels (N,) int64)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ValueError("the digit canvases need scikit-learn's bundled digits: "
                         "pip install 'fastseq[models]'") from None

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
    images = F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)[:, 0]
    return images.clamp(0, 1), torch.from_numpy(digits.target.astype(np.int64))


def split_indices(n, test_fraction=0.2, seed=0):
    """A fixed permutation split: the test digits (writers' samples) never appear in training."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    return order[n_test:], order[:n_test]


def place(digits, canvas=60, clutter=0, pool=None, rng=None):
    """digits (B, d, d) -> canvases (B, 1, canvas, canvas) with each digit at a random spot
    and `clutter` 8x8 random crops of random `pool` digits scattered over it (maximum-blended,
    so fragments can overlap the digit as in cluttered MNIST)."""
    b, d, _ = digits.shape
    out = torch.zeros(b, canvas, canvas)
    ys = rng.integers(0, canvas - d + 1, b)
    xs = rng.integers(0, canvas - d + 1, b)
    for i in range(b):
        out[i, ys[i]:ys[i] + d, xs[i]:xs[i] + d] = digits[i]
    if clutter:
        f = 8
        for i in range(b):
            for j in rng.integers(0, len(pool), clutter):
                fy, fx = rng.integers(0, d - f + 1, 2)
                y, x = rng.integers(0, canvas - f + 1, 2)
                patch = pool[j, fy:fy + f, fx:fx + f]
                out[i, y:y + f, x:x + f] = torch.maximum(out[i, y:y + f, x:x + f], patch)
    return out[:, None]


class DigitCanvases:
    """Training canvases drawn fresh each batch (new positions, new clutter) from the
    training digits; a fixed test set of canvases from the held-out digits."""

    def __init__(self, canvas_kind="translated", canvas=60, clutter=4, test_fraction=0.2,
                 seed=0, limit=None):
        if canvas_kind not in CANVASES:
            raise ValueError(f"--canvas: expected one of {CANVASES}, got {canvas_kind!r}")
        self.images, self.labels = load_digit_images()
        if canvas < self.images.shape[-1]:
            raise ValueError(f"--canvas-size: expected at least {self.images.shape[-1]} "
                             f"(the digit size), got {canvas}")
        self.canvas, self.clutter = canvas, clutter if canvas_kind == "cluttered" else 0
        self.train_idx, self.test_idx = split_indices(len(self.labels), test_fraction, seed)
        if limit:  # tiny sets for tests and overfitting checks
            self.train_idx, self.test_idx = self.train_idx[:limit], self.test_idx[:limit]
        self.rng = np.random.default_rng([seed, 1])
        test_rng = np.random.default_rng([seed, 2])
        self.test_x = self._canvases(self.test_idx, test_rng)
        self.test_y = self.labels[self.test_idx]

    def _canvases(self, idx, rng):
        pool = self.images[self.train_idx]  # clutter only ever comes from training digits
        return place(self.images[idx], self.canvas, self.clutter, pool, rng)

    def batch(self, batch_size):
        idx = self.train_idx[self.rng.integers(0, len(self.train_idx), batch_size)]
        return self._canvases(idx, self.rng), self.labels[idx]

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]
