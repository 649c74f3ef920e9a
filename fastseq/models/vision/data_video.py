"""Short videos, generated: a digit (scikit-learn's, upscaled to 16x16) moving across a
32x32 canvas and bouncing off its edges; at a random frame it is replaced by another digit,
so the per-frame labels (the digit on screen) change mid-clip. Frames carry heavy noise,
which a model that remembers earlier frames averages away (many to many)."""
import numpy as np
import torch

from .data_digits import load_digit_images, split_indices


def make_videos(images, labels, idx, n, frames, size, noise, rng):
    """-> videos (n, T, 1, size, size), labels (n, T)."""
    d = images.shape[-1]
    videos = torch.zeros(n, frames, 1, size, size)
    targets = torch.zeros(n, frames, dtype=torch.long)
    for i in range(n):
        first, second = idx[rng.integers(0, len(idx), 2)]
        cut = int(rng.integers(1, frames)) if rng.random() < 0.75 else frames  # a quarter never cut
        pos = rng.uniform(0, size - d, 2)
        vel = rng.uniform(1.5, 3.0, 2) * rng.choice([-1, 1], 2)
        for t in range(frames):
            j = first if t < cut else second
            y, x = pos.astype(int)
            videos[i, t, 0, y:y + d, x:x + d] = images[j]
            targets[i, t] = labels[j]
            pos += vel
            for k in range(2):  # bounce: reflect the position and the velocity at an edge
                if not 0 <= pos[k] <= size - d:
                    vel[k] = -vel[k]
                    pos[k] = np.clip(pos[k], 0, size - d)
    videos += noise * torch.from_numpy(rng.standard_normal(videos.shape).astype(np.float32))
    return videos, targets


class MovingDigits:
    """Fixed train and test clips; the test clips use held-out digits."""

    def __init__(self, n_train=2000, n_test=400, frames=8, size=32, noise=0.5, seed=0):
        if size < 16:
            raise ValueError(f"--size: expected at least 16 (the digit size), got {size}")
        images, labels = load_digit_images(scale=2)
        train_idx, test_idx = split_indices(len(labels), 0.2, seed)
        rng = np.random.default_rng([seed, 3])
        self.train_x, self.train_y = make_videos(images, labels, train_idx, n_train, frames, size, noise, rng)
        self.test_x, self.test_y = make_videos(images, labels, test_idx, n_test, frames, size, noise, rng)
