"""`fastseq train video`: per-frame labels of moving-digit clips, cross-entropy on every frame.
Under torchrun each rank keeps its rows of the global batch and its shard of the test clips."""
import torch
import torch.nn.functional as F

from ... import distributed
from . import loop
from .data_video import MovingDigits
from .video import VideoLabeler


class VideoTask:
    def __init__(self, args, device):
        self.dist = distributed.current()
        self.device, self.batch_size = device, args.batch_size
        self.data = {"train": args.train_clips, "frames": args.frames, "size": args.size,
                     "noise": args.noise, "seed": args.seed}
        self.clips = MovingDigits(args.train_clips, args.test_clips, args.frames, args.size,
                                  args.noise, args.seed)
        self.generator = torch.Generator().manual_seed(args.seed)  # shared: ranks keep their rows

    def loss(self, model):
        idx = torch.randint(len(self.clips.train_x), (self.batch_size,), generator=self.generator)
        idx = idx[self.dist.shard(self.batch_size)]
        logits = model(self.clips.train_x[idx].to(self.device))
        loss = F.cross_entropy(logits.flatten(0, 1), self.clips.train_y[idx].to(self.device).flatten())
        return self.dist.share(loss), {}

    @torch.no_grad()
    def evaluate(self, model):
        mine = self.dist.shard(len(self.clips.test_y))
        x, y = self.clips.test_x[mine].to(self.device), self.clips.test_y[mine].to(self.device)
        wrong = torch.zeros_like(y, dtype=torch.float)
        for i in range(0, len(x), 200):
            wrong[i:i + 200] = (model(x[i:i + 200]).argmax(-1) != y[i:i + 200]).float()
        frames, first, last, clips = self.dist.all_sum(
            [wrong.sum().item(), wrong[:, 0].sum().item(), wrong[:, -1].sum().item(), len(y)])
        return {"test_frame_error": frames / (clips * y.shape[1]),
                "test_first_frame_error": first / clips,
                "test_last_frame_error": last / clips}

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
