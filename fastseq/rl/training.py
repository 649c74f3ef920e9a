"""What every agent's training loop shares: the run folder, progress, the log of returns
and periodic evaluations, best/last checkpoints, clean interrupts with exact resume, and
the return-over-steps plot. In a distributed run (A2C's data-parallel learners) rank 0
evaluates, keeps the checkpoints and writes the folder; every rank's loop state goes into
the one resume.pt, and a stop request on any rank stops them all at the same update."""
import csv
import dataclasses
import os
import time

import numpy as np
import torch

from .. import ckptio, distributed, progress
from ..runs import CONFIG, Metrics, RunDir
from ..signals import Interrupted, graceful_interrupt
from .checkpoint import save_checkpoint
from .evaluate import Evaluator, evaluate_checkpoint

RESUME = "resume.pt"

# Evaluation seeds used while training; final evaluations (fastseq eval) default to 10**6,
# so the reported score is never measured on the episodes the best checkpoint was picked on.
SELECTION_SEED = 10**5


class TrainingRun:
    """One agent's run, used as `with TrainingRun(...) as run:` around the training loop.

    It owns the run folder (RunDir: refuses to overwrite, config.json), the metrics log, the
    progress display and the signal handlers. It records episode returns and periodic greedy
    evaluations that keep the best checkpoint, stops early once a confirmation evaluation
    reaches the target, and on SIGINT/SIGTERM saves everything plus resume.pt, the trainer's
    whole loop state (environments, replay buffer, RNGs), so --resume continues exactly."""

    def __init__(self, *, algo, out_dir, progress=True, resume=False, overwrite=False, tensorboard=False,
                 final_episodes=0):
        self.algo, self.resume, self.progress_enabled = algo, resume, progress
        self.final_episodes = int(final_episodes)
        self.dir = RunDir(out_dir, resume=resume, overwrite=overwrite)
        self.out_dir = str(self.dir.path)
        self.tensorboard = tensorboard
        self.metrics = None  # opened in begin(), once config.json marks the folder as a run
        self.episodes = []  # (step, return)
        self.evals = []  # (step, mean return, episodes)
        self.best = (-np.inf, 0)  # (score, step)
        self.solved_at = None
        self.bar = None
        self._interrupt = None
        self.dist = distributed.current()

    def __enter__(self):
        self._interrupt = graceful_interrupt()
        self.stop = self._interrupt.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
        if self.metrics is not None:
            self.metrics.close()
        self._interrupt.__exit__(*exc)
        return False

    @property
    def best_path(self):
        return os.path.join(self.out_dir, "best.pt")

    @property
    def last_path(self):
        return os.path.join(self.out_dir, "last.pt")

    def resumed_state(self):
        """The loop state an interrupted run saved (None for a new run); restores this
        record (returns, evaluations, best) and the torch RNG alongside."""
        if not self.resume:
            return None
        saved = self.dist.on_main(ckptio.load, self.dir.file(RESUME), "--resume", what="fastseq RL resume state",
                                  name=RESUME, weights_only=False)
        self.episodes, self.evals = saved["episodes"], saved["evals"]
        self.best, self.solved_at = tuple(saved["best"]), saved["solved_at"]
        loops = saved.get("rank_loops") or [saved["loop"]]
        if len(loops) != self.dist.world_size:
            raise ValueError(f"--resume: {self.dir.file(RESUME)} holds the environments of {len(loops)} "
                             f"process(es); resume it with as many (this launch has {self.dist.world_size})")
        if not self.dist.restore_rng(saved.get("rank_rng")):
            torch.set_rng_state(saved["torch_rng"])
        return loops[self.dist.rank]

    def begin(self, *, env_spec, network_spec, config, model, step, eval_episodes, confirm_episodes,
              target_return, device):
        """Called once the trainer has built (or resumed) its state: checks a resumed run's
        settings, saves config.json, sets up evaluation and progress, prints the header."""
        self.env_spec, self.network_spec = dict(env_spec), dict(network_spec)
        self.config, self.total_steps = config_dict(config), int(config.total_steps)
        self.target_return = target_return
        resolved = {"algo": self.algo, "env": self.env_spec, "network": self.network_spec,
                    "config": self.config, "device": str(device)}
        if self.resume:
            saved = self.dir.load_config()
            changed = sorted(k for k in self.config if k != "total_steps"
                             and saved.get("config", {}).get(k) != self.config[k])
            if saved.get("env") != self.env_spec or changed:
                raise ValueError(f"--resume: the settings differ from {self.dir.file(CONFIG)} "
                                 f"({', '.join(changed) or 'environment'}); resume with the run's own "
                                 f"settings (only --steps may change)")
            if self.solved_at is not None:
                raise ValueError(f"--resume: the run was solved at step {self.solved_at}; "
                                 f"there is nothing to continue")
            if step >= self.total_steps:
                raise ValueError(f"--resume: the run already ended at step {step}; "
                                 f"ask for more --steps than {step} to continue it")
        self.dir.save_config(resolved)
        self.metrics = Metrics(self.dir, self.algo, tensorboard=self.tensorboard, resume=self.resume)
        if self.resume:
            self.metrics.rewind(step)  # entries logged after the saved state are redone
        self.evaluator = Evaluator(env_spec, eval_episodes) if eval_episodes else None
        self.confirmer = Evaluator(env_spec, confirm_episodes) if confirm_episodes else None
        self.start, self.first_step = time.perf_counter(), int(step)
        n_params = sum(p.numel() for p in model.parameters())
        env_text = self.env_spec["env_id"] + "".join(
            [", velocities hidden" if self.env_spec.get("hide_velocity") else "",
             f", history {self.env_spec['history']}" if self.env_spec.get("history", 1) > 1 else ""])
        progress.header(self.algo, parameters=n_params, data=env_text, device=device,
                        threads=torch.get_num_threads(), network=self.network_spec["kind"],
                        steps=f"{step}->{self.total_steps}", run=self.out_dir,
                        **({"processes": self.dist.world_size} if self.dist.enabled else {}))
        self.bar = progress.Progress(self.total_steps, initial=step, desc=self.algo,
                                     enabled=self.progress_enabled)

    def episode_done(self, step, episode_return):
        self.episodes.append((step, float(episode_return)))
        self.metrics.log(step, episode_return=episode_return)

    def update_done(self, step, loss):
        self.metrics.log(step, loss=loss)

    def show(self, step, **fields):
        """Advances the progress display; fields (epsilon, ...) join the recent mean return."""
        recent = [r for _, r in self.episodes[-20:]]
        shown = {"return": float(np.mean(recent)) if recent else "-"}
        if self.evals:
            shown["eval"] = self.evals[-1][1]
        shown.update(fields)
        shown["steps/s"] = f"{self.bar.rate(step):.0f}"
        self.bar.update(step, **shown)

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
        counts as solved. In a distributed run rank 0 evaluates and tells the others."""
        return self.dist.on_main(self._evaluate, step, model)

    def _evaluate(self, step, model):
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
        self.metrics.log(step, eval_return=score)
        if score > self.best[0]:
            self.best = (score, step)
            self._save(self.best_path, model, step, score)
        self.bar.write(f"step {step}: greedy evaluation {score:.1f} over {n} episodes "
                       f"(best {self.best[0]:.1f} at step {self.best[1]})")
        if self._at_target(score) and self.solved_at is None:
            self.solved_at = step
            self.bar.write(f"solved at step {step}: {score:.1f} >= the target {self.target_return:g}"
                           + ("; stopping" if self.config.get("stop_when_solved") else ""))
        return self.solved_at is not None

    def check_stop(self, step, model, loop):
        """Between steps: after SIGINT/SIGTERM (to any rank) save everything and raise Interrupted."""
        if self.dist.any(self.stop.requested) and step < self.total_steps:
            self._save_all(step, model, loop)
            raise Interrupted(f"{self.algo}: interrupted by {self.stop.signal_name or 'a signal to another rank'} "
                              f"at step {step}; saved "
                              f"{self.last_path} and {self.dir.file(RESUME)}; the same command with "
                              f"--resume continues it")

    def _save_all(self, step, model, loop):
        self._save(self.last_path, model, step, self.evals[-1][1] if self.evals else float("nan"))
        if not os.path.exists(self.best_path):
            self._save(self.best_path, model, step, float("nan"))
        # Every rank's loop state (its environments): gathered, so rank 0 writes one file.
        loops = self.dist.gather(loop) if self.dist.enabled else None
        rngs = self.dist.rng_states() if self.dist.enabled else None
        ckptio.save({"loop": None if loops else loop, "episodes": self.episodes, "evals": self.evals, "best": self.best,
                     "solved_at": self.solved_at, "torch_rng": torch.get_rng_state(),
                     "rank_loops": loops, "rank_rng": rngs}, self.dir.file(RESUME))
        if self.dist.is_main:
            self.write_log()
            plot_returns(self, os.path.join(self.out_dir, "returns.png"))

    def finish(self, step, model, loop):
        self.show(step)
        self.bar.close()
        self._save_all(step, model, loop)
        seconds = time.perf_counter() - self.start
        final = self.dist.on_main(self._final)  # rank 0 holds the evaluations and best.pt
        metrics_json = self.metrics.finish(final, step, seconds=seconds)
        rate = (step - self.first_step) / max(seconds, 1e-9)
        progress.summary(self.algo, seconds=seconds, rate=rate, unit="env steps",
                         final={k: v for k, v in final.items() if v is not None},
                         files=[self.best_path, self.last_path, os.path.join(self.out_dir, "returns.png"),
                                metrics_json])
        return {"algo": self.algo, "env": self.env_spec["env_id"], "steps": int(step),
                "best_step": int(self.best[1]), "best_selection_eval": float(self.best[0]),
                "solved_at": self.solved_at, "wall_s": seconds, "final": final,
                "best_path": self.best_path, "last_path": self.last_path}

    def _final(self):
        final = {"best_selection_eval": float(self.best[0]), "best_step": int(self.best[1]),
                 "solved_at": self.solved_at}
        if self.final_episodes:
            returns, _ = evaluate_checkpoint(self.best_path, episodes=self.final_episodes)
            final.update(mean_return=float(returns.mean()), std_return=float(returns.std()),
                         min_return=float(returns.min()), episodes=len(returns))
        return final

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
    if run.target_return is not None:
        ax.axhline(run.target_return, color="tab:green", ls="--", lw=1,
                   label=f"solved: {run.target_return:g}")
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
