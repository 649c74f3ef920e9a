"""`fastseq train video`: per-frame labels of moving-digit clips, cross-entropy on every frame."""
import torch
import torch.nn.functional as F

from . import loop
from .data_video import MovingDigits
from .video import VideoLabeler


class VideoTask:
    def __init__(self, args, device):
        self.device, self.batch_size = device, args.batch_size
        self.data = {"train": args.train_clips, "frames": args.frames, "size": args.size,
                     "noise": args.noise, "seed": args.seed}
        self.clips = MovingDigits(args.train_clips, args.test_clips, args.frames, args.size,
                                  args.noise, args.seed)
        self.generator = torch.Generator().manual_seed(args.seed)

    def loss(self, model):
        idx = torch.randint(len(self.clips.train_x), (self.batch_size,), generator=self.generator)
        logits = model(self.clips.train_x[idx].to(self.device))
        return F.cross_entropy(logits.flatten(0, 1), self.clips.train_y[idx].to(self.device).flatten()), {}

    @torch.no_grad()
    def evaluate(self, model):
        x, y = self.clips.test_x.to(self.device), self.clips.test_y.to(self.device)
        predictions = torch.cat([model(x[i:i + 200]).argmax(-1) for i in range(0, len(x), 200)])
        wrong = (predictions != y).float()
        return {"test_frame_error": wrong.mean().item(),
                "test_first_frame_error": wrong[:, 0].mean().item(),
                "test_last_frame_error": wrong[:, -1].mean().item()}

    def final(self, model):
        return {}

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])


def train_video(args):
    device = loop.setup(args)
    model = VideoLabeler(args.size, args.channels, hidden=args.hidden, impl=args.impl).to(device)
    run = loop.open_run(args, "video")
    return loop.fit(args, run, model, VideoTask(args, device))
