"""Deep Q-learning: replay buffer, target network (periodic copy or Polyak averaging),
linear epsilon-greedy exploration, Huber loss, gradient clipping, optional Double DQN."""
import copy
import dataclasses
import types

import numpy as np
import torch
import torch.nn.functional as F

from .envs import check_spaces, make_env
from .networks import build_network
from .replay import ReplayBuffer
from .schedules import LinearSchedule
from .settings import AT_LEAST_1, POSITIVE, UNIT, check
from .training import TrainingRun


@dataclasses.dataclass
class DQNConfig:
    """Defaults solve CartPole-v1 (see benchmarks/results/rl_cartpole.md)."""
    total_steps: int = 100_000
    lr: float = 2.3e-3
    gamma: float = 0.99
    buffer_size: int = 100_000
    batch_size: int = 64
    learning_starts: int = 1_000
    train_every: int = 256  # env steps between training phases ...
    gradient_steps: int = 128  # ... of this many updates each
    target_update_every: int = 256  # env steps between hard target copies (tau == 1)
    tau: float = 1.0  # < 1: Polyak-average the target after every update instead
    eps_start: float = 1.0
    eps_end: float = 0.04
    eps_fraction: float = 0.16  # of total_steps spent annealing epsilon
    double: bool = False
    grad_clip: float = 10.0
    hidden: tuple = (256, 256)
    network: str = "mlp"  # "mlp" or "lstm" (over the observation history)
    lstm_hidden: int = 64
    eval_every: int = 5_000
    eval_episodes: int = 10
    confirm_episodes: int = 100
    stop_when_solved: bool = True

    def validate(self):
        check(self, {"total_steps": AT_LEAST_1, "lr": POSITIVE, "gamma": UNIT, "buffer_size": AT_LEAST_1,
                     "batch_size": AT_LEAST_1, "train_every": AT_LEAST_1, "gradient_steps": AT_LEAST_1,
                     "target_update_every": AT_LEAST_1, "tau": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
                     "eps_fraction": UNIT, "network": (lambda v: v in ("mlp", "lstm"), "mlp or lstm"),
                     "eval_every": AT_LEAST_1})


def network_spec(config, obs_shape, n_actions):
    if config.network == "lstm":
        if len(obs_shape) != 2:
            raise ValueError(f"network='lstm' needs an observation history (history > 1); "
                             f"observation shape is {obs_shape}")
        return {"kind": "lstm_q", "obs_shape": list(obs_shape), "n_actions": n_actions,
                "kwargs": {"lstm_hidden": config.lstm_hidden, "hidden": list(config.hidden[-1:])}}
    return {"kind": "mlp_q", "obs_shape": list(obs_shape), "n_actions": n_actions,
            "kwargs": {"hidden": list(config.hidden)}}


class DQNLearner:
    """The update rule, apart from the environment loop (tests drive it directly)."""

    def __init__(self, qnet, config):
        self.config = config
        self.qnet = qnet
        self.target = copy.deepcopy(qnet).requires_grad_(False)
        self.optimizer = torch.optim.Adam(qnet.parameters(), lr=config.lr)
        self.online_params = list(qnet.parameters())
        self.target_params = list(self.target.parameters())

    def td_targets(self, rewards, next_obs, terminated):
        with torch.no_grad():
            if self.config.double:
                # Double DQN: the online net picks the action, the target net values it.
                best = self.qnet(next_obs).argmax(dim=1, keepdim=True)
                next_q = self.target(next_obs).gather(1, best).squeeze(1)
            else:
                next_q = self.target(next_obs).max(dim=1).values
            return rewards + self.config.gamma * (1.0 - terminated) * next_q

    def update(self, batch):
        obs, actions, rewards, next_obs, terminated = batch
        targets = self.td_targets(rewards, next_obs, terminated)
        q = self.qnet(obs).gather(1, actions.unsqueeze(1)).squeeze(1)
        loss = F.smooth_l1_loss(q, targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.online_params, self.config.grad_clip)
        self.optimizer.step()
        if self.config.tau < 1.0:
            with torch.no_grad():
                torch._foreach_lerp_(self.target_params, self.online_params, self.config.tau)
        return loss.item()

    def sync_target(self):
        with torch.no_grad():
            torch._foreach_copy_(self.target_params, self.online_params)


def train_dqn(env_id, config=None, seed=0, out_dir="runs/dqn", hide_velocity=False, history=1,
              progress=True, device="cpu", **run_options):
    """Trains, keeps best.pt (best greedy evaluation) and last.pt in out_dir; returns a summary.
    run_options (resume, overwrite, tensorboard, final_episodes) go to TrainingRun."""
    config = config or DQNConfig()
    config.validate()
    device = torch.device(device)
    env_spec = {"env_id": env_id, "hide_velocity": bool(hide_velocity), "history": int(history)}
    with TrainingRun(algo="dqn", out_dir=out_dir, progress=progress, **run_options) as run:
        # Everything the loop changes lives in `s`, so an interrupt can save it whole.
        s = run.resumed_state()
        if s is None:
            torch.manual_seed(seed)
            env = make_env(**env_spec)
            n_actions, obs_shape = check_spaces(env, "dqn", env_id)
            spec = network_spec(config, obs_shape, n_actions)
            s = types.SimpleNamespace(
                step=0, env=env, spec=spec, n_actions=n_actions, episode_return=0.0,
                learner=DQNLearner(build_network(spec).to(device), config),
                buffer=ReplayBuffer(config.buffer_size, obs_shape, seed=seed),
                rng=np.random.default_rng(seed), obs=env.reset(seed=seed)[0])
        qnet = s.learner.qnet
        epsilon = LinearSchedule(config.eps_start, config.eps_end, config.eps_fraction * config.total_steps)
        target = s.env.spec.reward_threshold if s.env.spec is not None else None
        run.begin(env_spec=env_spec, network_spec=s.spec, config=config, model=qnet, step=s.step,
                  eval_episodes=config.eval_episodes, confirm_episodes=config.confirm_episodes,
                  target_return=target, device=device)
        while s.step < config.total_steps:
            s.step += 1
            step = s.step
            eps = epsilon(step)
            if s.rng.random() < eps:
                action = int(s.rng.integers(s.n_actions))
            else:
                with torch.no_grad():
                    obs_t = torch.as_tensor(s.obs, dtype=torch.float32, device=device).unsqueeze(0)
                    action = int(qnet(obs_t).argmax())
            next_obs, reward, terminated, truncated, _ = s.env.step(action)
            s.buffer.add(s.obs, action, reward, next_obs, terminated)
            s.episode_return += reward
            s.obs = next_obs
            if terminated or truncated:
                run.episode_done(step, s.episode_return)
                s.episode_return = 0.0
                s.obs, _ = s.env.reset()
            if step >= config.learning_starts:
                if step % config.train_every == 0:
                    losses = [s.learner.update([t.to(device) for t in s.buffer.sample(config.batch_size)])
                              for _ in range(config.gradient_steps)]
                    run.update_done(step, float(np.mean(losses)))
                if config.tau >= 1.0 and step % config.target_update_every == 0:
                    s.learner.sync_target()
                if step % config.eval_every == 0 and run.evaluate(step, qnet) and config.stop_when_solved:
                    break
            if step % 250 == 0:
                run.show(step, eps=eps)
            run.check_stop(step, qnet, s)
        return run.finish(s.step, qnet, s)
