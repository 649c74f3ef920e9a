"""`fastseq train cnn|fc|ram`: digit-canvas classification. cnn and fc learn by
cross-entropy on the whole canvas; ram by cross-entropy for the class plus REINFORCE
(reward 1 for a right answer, a learned baseline subtracted) for where it looks.
Under torchrun every rank draws the global batch's canvases and keeps its rows (the batch is
then that of one process), and the test error sums over the ranks' shards of the test set."""
import torch
import torch.nn.functional as F

from ... import distributed, progress
from . import loop
from .classifiers import CNNClassifier, FCClassifier
from .data_digits import DigitCanvases
from .ram import RAM


class DigitTask:
    def __init__(self, args, device):
        self.dist = distributed.current()
        self.device, self.batch_size = device, args.batch_size
        self.data = {"canvas": args.canvas, "canvas_size": args.canvas_size, "clutter": args.clutter,
                     "seed": args.seed}
        self.digits = DigitCanvases(args.canvas, args.canvas_size, args.clutter, seed=args.seed,
                                    limit=getattr(args, "limit", None))

    def batch(self):
        # The whole batch from the generator every rank shares, then this rank's rows: the
        # canvases are drawn one after another from one stream, so a shard cannot be drawn alone.
        x, y = self.digits.batch(self.batch_size)
        rows = self.dist.shard(self.batch_size)
        return x[rows].to(self.device), y[rows].to(self.device)

    def loss(self, model):
        x, y = self.batch()
        return self.dist.share(F.cross_entropy(model(x), y)), {}

    @torch.no_grad()
    def predict(self, model, x):
        return model(x).argmax(-1)

    def evaluate(self, model):
        mine = self.dist.shard(len(self.digits.test_y))
        x, y = self.digits.test_x[mine].to(self.device), self.digits.test_y[mine].to(self.device)
        wrong = sum(int((self.predict(model, x[i:i + 500]) != y[i:i + 500]).sum()) for i in range(0, len(x), 500))
        wrong, total = self.dist.all_sum([wrong, len(y)])
        return {"test_error": wrong / total}

    def final(self, model):
        return {}

    def state_dict(self):
        return self.digits.state_dict()

    def load_state_dict(self, state):
        self.digits.load_state_dict(state)


class RAMTask(DigitTask):
    def __init__(self, args, device):
        super().__init__(args, device)
        # The glimpse locations' noise: a stream per rank (its rows must not share noise).
        seed = args.seed if not self.dist.enabled else args.seed * 1_000_003 + self.dist.rank
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def loss(self, model):
        x, y = self.batch()
        logits, logp, baseline, _ = model(x, sample=True, generator=self.generator)
        ce = F.cross_entropy(logits, y)
        reward = (logits.argmax(-1) == y).float()
        # The reward comes only at the end, so every location is credited with it, less
        # the baseline's guess from that step's state (lower variance, same expectation).
        advantage = (reward[:, None] - baseline).detach()
        reinforce = -(logp * advantage).sum(1).mean()
        baseline_loss = F.mse_loss(baseline, reward[:, None].expand_as(baseline))
        share = self.dist.share
        return share(ce + reinforce + baseline_loss), {"ce": share(ce.item()), "reward": share(reward.mean().item())}

    @torch.no_grad()
    def predict(self, model, x):
        return model(x, sample=False)[0].argmax(-1)

    def state_dict(self):
        generators = self.dist.gather(self.generator.get_state())
        return {**self.digits.state_dict(), "generator": generators[0], "generators": generators}

    def load_state_dict(self, state):
        self.digits.load_state_dict(state)
        generators = state.get("generators") or [state["generator"]]
        if len(generators) != self.dist.world_size:
            raise ValueError(f"--resume: this ram run was trained by {len(generators)} process(es), each "
                             f"with its own glimpse noise; resume it with as many (now {self.dist.world_size})")
        self.generator.set_state(generators[self.dist.rank])


def build(kind, args):
    if kind == "cnn":
        return CNNClassifier(args.canvas_size, args.channels, args.self_attention, impl=args.impl)
    if kind == "fc":
        return FCClassifier(args.canvas_size, args.hidden, impl=args.impl)
    return RAM(args.glimpses, args.patch, args.scales, hidden=args.hidden, core=args.core,
               std=args.std, impl=args.impl)


def name_parts(kind, args):
    if kind == "cnn":
        return (args.canvas, "selfattn" if args.self_attention else "plain")
    if kind == "ram":
        return (args.canvas, f"g{args.glimpses}")
    return (args.canvas,)


def train_digits(kind, args):
    device = loop.setup(args)
    model = build(kind, args).to(device)
    run = loop.open_run(args, kind, *name_parts(kind, args))
    task = (RAMTask if kind == "ram" else DigitTask)(args, device)
    final = loop.fit(args, run, model, task)
    if kind == "ram" and task.dist.is_main:
        from .viz import plot_glimpses

        x = task.digits.test_x[:6].to(device)
        with torch.no_grad():
            logits, _, _, locs = model(x, sample=False)
        path = run.file("glimpses.png")
        plot_glimpses(x.cpu(), locs.cpu(), model.patch, model.scales, logits.argmax(-1).tolist(),
                      task.digits.test_y[:6].tolist(), str(path))
        progress.note(f"wrote {path}")
    return final
