"""Recurrent Attention Model (Mnih et al. 2014): the classifier never sees the whole
canvas, only a few glimpses (patches at several resolutions around a location), and
learns where to look next by REINFORCE. Locations are (y, x) in [-1, 1], the canvas centre
at 0; the first glimpse is always at the centre."""
import torch
import torch.nn.functional as F

from ..layers import layers_for

CORES = ("lstm", "rnn")


def glimpse_sensor(images, loc, patch, scales):
    """images (B, 1, H, W), loc (B, 2) -> (B, scales, patch, patch): square crops of side
    patch * 2**k centred at loc, each averaged down to patch x patch (zeros outside)."""
    b, _, h, w = images.shape
    out = []
    for k in range(scales):
        side = patch * 2 ** k
        # Pixel-centre offsets of a side x side crop in grid_sample's normalised units.
        offsets = (torch.arange(side, device=images.device, dtype=images.dtype) + 0.5 - side / 2)
        oy, ox = offsets * (2 / h), offsets * (2 / w)
        gy, gx = torch.meshgrid(oy, ox, indexing="ij")
        grid = torch.stack([gx, gy], -1)[None] + loc.flip(-1)[:, None, None, :]  # grid_sample wants (x, y)
        crop = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out.append(F.avg_pool2d(crop, 2 ** k) if k else crop)
    return torch.cat(out, 1)


class RAM(torch.nn.Module):
    kind = "ram"

    def __init__(self, glimpses: int = 6, patch: int = 12, scales: int = 3, glimpse_hidden: int = 128,
                 location_hidden: int = 64, hidden: int = 256, core: str = "lstm", std: float = 0.12,
                 classes: int = 10, impl: str = "fastseq"):
        super().__init__()
        if core not in CORES:
            raise ValueError(f"--core: expected one of {CORES}, got {core!r}")
        nn, _ = layers_for(impl)
        self.config = dict(glimpses=glimpses, patch=patch, scales=scales, glimpse_hidden=glimpse_hidden,
                           location_hidden=location_hidden, hidden=hidden, core=core, std=std,
                           classes=classes, impl=impl)
        self.glimpses, self.patch, self.scales, self.std = glimpses, patch, scales, std
        # Glimpse network: what (the patches) and where (the location), merged.
        self.what = nn.Linear(scales * patch * patch, glimpse_hidden)
        self.where = nn.Linear(2, location_hidden)
        self.merge_what = nn.Linear(glimpse_hidden, hidden)
        self.merge_where = nn.Linear(location_hidden, hidden)
        self.core = (nn.LSTMCell if core == "lstm" else nn.RNNCell)(hidden, hidden)
        self.locator = nn.Linear(hidden, 2)
        self.baseline = nn.Linear(hidden, 1)
        self.classifier = nn.Linear(hidden, classes)

    def glimpse(self, images, loc):
        rho = glimpse_sensor(images, loc, self.patch, self.scales).flatten(1)
        what = F.relu(self.what(rho))
        where = F.relu(self.where(loc))
        return F.relu(self.merge_what(what) + self.merge_where(where))

    def forward(self, images, sample: bool = True, generator=None):
        """-> logits (B, classes), log-probs of the sampled locations (B, G-1), baselines
        (B, G-1), locations (B, G, 2). sample=False follows the mean location (evaluation).
        The location and baseline heads read a detached state: REINFORCE alone trains where
        to look, cross-entropy alone what to remember."""
        b = images.shape[0]
        loc = images.new_zeros(b, 2)
        state = None
        logps, baselines, locs = [], [], [loc]
        for t in range(self.glimpses):
            g = self.glimpse(images, loc)
            state = self.core(g, state)
            h = state[0] if isinstance(state, tuple) else state
            if t == self.glimpses - 1:
                break
            mean = torch.tanh(self.locator(h.detach()))
            if sample:
                noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
                loc = (mean + self.std * noise).detach()
            else:
                loc = mean.detach()
            logps.append(torch.distributions.Normal(mean, self.std).log_prob(loc).sum(-1))
            baselines.append(self.baseline(h.detach()).squeeze(-1))
            loc = loc.clamp(-1, 1)
            locs.append(loc)
        logits = self.classifier(h)
        empty = images.new_zeros(b, 0)
        return (logits, torch.stack(logps, 1) if logps else empty,
                torch.stack(baselines, 1) if baselines else empty, torch.stack(locs, 1))
