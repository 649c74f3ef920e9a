"""What every training loop shares: the progress bar, the log of returns and periodic
evaluations, best/last checkpoints and the return-over-steps plot."""
import csv
import dataclasses
import os
import sys
import time

import numpy as np

from .checkpoint import save_checkpoint
from .evaluate import Evaluator

# Evaluation seeds used while training; final evaluations (fastseq eval) default to 10**6,
# so the reported score is never measured on the episodes the best checkpoint was picked on.
SELECTION_SEED = 10**5


class TrainingRun:
    """Tracks a run: episode returns, periodic greedy evaluations that keep the best
    checkpoint, and early stopping once a confirmation evaluation reaches the target."""

    def __init__(self, *, algo, env_spec, network_spec, config, total_steps, out_dir,
                 eval_episodes, confirm_episodes, target_return, progress=True):
        self.algo, self.env_spec, self.network_spec = algo, dict(env_spec), dict(network_spec)
        self.config, self.total_steps, self.out_dir = dict(config), int(total_steps), out_dir
        self.target_return = target_return
        self.episodes = []  # (step, return)
        self.evals = []  # (step, mean return, episodes)
        self.best = (-np.inf, 0)  # (score, step)
        self.solved_at = None
        self.start = time.perf_counter()
        self.evaluator = Evaluator(env_spec, eval_episodes) if eval_episodes else None
        self.confirmer = Evaluator(env_spec, confirm_episodes) if confirm_episodes else None
        self.bar = None
        if progress:
            from tqdm import tqdm
            self.bar = tqdm(total=self.total_steps, unit="step", desc=algo, file=sys.stderr,
                            dynamic_ncols=True, mininterval=0.5)
        self._shown_step = 0
        self.postfix = {}
        os.makedirs(out_dir, exist_ok=True)

    @property
    def best_path(self):
        return os.path.join(self.out_dir, "best.pt")

    @property
    def last_path(self):
        return os.path.join(self.out_dir, "last.pt")

    def episode_done(self, step, episode_return):
        self.episodes.append((step, float(episode_return)))

    def show(self, step, **postfix):
        """Advances the bar; postfix values (epsilon, ...) join the recent mean return."""
        if self.bar is None:
            return
        self.bar.update(step - self._shown_step)
        self._shown_step = step
        recent = [r for _, r in self.episodes[-20:]]
        fields = {"return": f"{np.mean(recent):.1f}" if recent else "-"}
        if self.evals:
            fields["eval"] = f"{self.evals[-1][1]:.1f}"
        fields.update({k: f"{v:.3f}" if isinstance(v, float) else v for k, v in postfix.items()})
        elapsed = time.perf_counter() - self.start
        fields["steps/s"] = f"{step / max(elapsed, 1e-9):.0f}"
        self.bar.set_postfix(fields, refresh=False)

    def _save(self, path, model, step, score):
        save_checkpoint(path, algo=self.algo, env=self.env_spec, network_spec=self.network_spec,
                        model=model, config=self.config,
                        stats={"step": int(step), "selection_eval_mean": float(score),
                               "wall_s": time.perf_counter() - self.start})

    def _at_target(self, score):
        return self.target_return is not None and score >= self.target_return

    def evaluate(self, step, model):
        """Greedy evaluation; keeps the best checkpoint. A score at the target is confirmed on
        more episodes (when confirm_episodes > 0) before it counts. Returns True once the run
        counts as solved."""
        was_training = model.training
        model.eval()
        try:
            score = float(self.evaluator.run(model, SELECTION_SEED).mean())
            n = len(self.evaluator.envs)
            if self._at_target(score) and self.confirmer is not None:
                score = float(self.confirmer.run(model, SELECTION_SEED + 1000).mean())
                n = len(self.confirmer.envs)
        finally:
            model.train(was_training)
        self.evals.append((step, score, n))
        if score > self.best[0]:
            self.best = (score, step)
            self._save(self.best_path, model, step, score)
        if self._at_target(score) and self.solved_at is None:
            self.solved_at = step
        return self.solved_at is not None

    def finish(self, step, model):
        if self.bar is not None:
            self.show(step)
            self.bar.close()
        self._save(self.last_path, model, step, self.evals[-1][1] if self.evals else float("nan"))
        if not os.path.exists(self.best_path):
            self._save(self.best_path, model, step, float("nan"))
        self.write_log()
        plot_returns(self, os.path.join(self.out_dir, "returns.png"))
        return {"algo": self.algo, "env": self.env_spec["env_id"], "steps": int(step),
                "best_step": int(self.best[1]), "best_selection_eval": float(self.best[0]),
                "solved_at": self.solved_at, "wall_s": time.perf_counter() - self.start,
                "best_path": self.best_path, "last_path": self.last_path}

    def write_log(self):
        with open(os.path.join(self.out_dir, "episodes.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "return"])
            writer.writerows(self.episodes)
        with open(os.path.join(self.out_dir, "evals.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "mean_return", "episodes"])
            writer.writerows(self.evals)


def config_dict(config):
    """A config dataclass as plain types (tuples become lists) for the checkpoint."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def plot_returns(run, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if run.episodes:
        steps, returns = np.array(run.episodes).T
        ax.plot(steps, returns, lw=0.5, alpha=0.35, color="tab:blue", label="training episode return")
        window = min(20, len(returns))
        smooth = np.convolve(returns, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], smooth, lw=1.2, color="tab:blue", label=f"mean of last {window}")
    if run.evals:
        steps, means, _ = np.array(run.evals).T
        ax.plot(steps, means, "o-", ms=3, color="tab:red", label="greedy evaluation")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("return")
    title = f"{run.algo} ({run.network_spec['kind']}) on {run.env_spec['env_id']}"
    if run.env_spec.get("hide_velocity"):
        title += ", velocities hidden"
    if run.env_spec.get("history", 1) > 1:
        title += f", history {run.env_spec['history']}"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
