"""Advantage actor-critic (A2C): synchronous n-step rollouts over gymnasium.vector envs,
advantages from generalised advantage estimation (lambda = 1 gives plain n-step returns)."""
import dataclasses

import gymnasium as gym
import numpy as np
import torch

from .envs import check_spaces, make_env
from .networks import build_network
from .reinforce import policy_gradient_losses
from .training import TrainingRun, config_dict


@dataclasses.dataclass
class A2CConfig:
    # Summed over all environments; counted in whole rollouts of num_envs * rollout_steps
    # (128 by default), so a budget is rounded up to the next multiple of that.
    total_steps: int = 500_000
    num_envs: int = 8
    rollout_steps: int = 16  # per environment, between updates
    lr: float = 1e-3
    gamma: float = 0.99
    gae_lambda: float = 0.95
    value_coef: float = 0.5
    entropy_coef: float = 0.0
    normalize_advantages: bool = True
    grad_clip: float = 0.5
    hidden: tuple = (64, 64)
    eval_every: int = 10_000
    eval_episodes: int = 10
    confirm_episodes: int = 100
    stop_when_solved: bool = True

    def validate(self):
        checks = [("total_steps", self.total_steps >= 1), ("num_envs", self.num_envs >= 1),
                  ("rollout_steps", self.rollout_steps >= 1), ("lr", self.lr > 0),
                  ("gamma", 0 <= self.gamma <= 1), ("gae_lambda", 0 <= self.gae_lambda <= 1),
                  ("eval_every", self.eval_every >= 1)]
        for name, ok in checks:
            if not ok:
                raise ValueError(f"A2CConfig.{name}: invalid value {getattr(self, name)!r}")


def gae(rewards, values, next_values, dones, gamma, lam):
    """Generalised advantage estimates over a (T, N) rollout. `next_values[t]` is V of the
    state after step t (already 0 where the episode terminated), `dones[t]` cuts the
    recursion where an episode ended (terminated or truncated)."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        delta = rewards[t] + gamma * next_values[t] - values[t]
        running = delta + gamma * lam * (1.0 - dones[t]) * running
        advantages[t] = running
    return advantages


def train_a2c(env_id, config=None, seed=0, out_dir="runs/a2c", hide_velocity=False, history=1, progress=True):
    config = config or A2CConfig()
    config.validate()
    torch.manual_seed(seed)
    env_spec = {"env_id": env_id, "hide_velocity": bool(hide_velocity), "history": int(history)}
    probe = make_env(**env_spec)
    n_actions, obs_shape = check_spaces(probe, "a2c", env_id)
    target = probe.spec.reward_threshold if probe.spec is not None else None
    probe.close()
    envs = gym.vector.SyncVectorEnv([lambda: make_env(**env_spec)] * config.num_envs,
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    spec = {"kind": "actor_critic", "obs_shape": list(obs_shape), "n_actions": n_actions,
            "kwargs": {"hidden": list(config.hidden)}}
    model = build_network(spec)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    run = TrainingRun(algo="a2c", env_spec=env_spec, network_spec=spec,
                      config=config_dict(config),
                      total_steps=config.total_steps, out_dir=out_dir, eval_episodes=config.eval_episodes,
                      confirm_episodes=config.confirm_episodes, target_return=target, progress=progress)
    T, N = config.rollout_steps, config.num_envs
    obs, _ = envs.reset(seed=seed)
    episode_returns = np.zeros(N)
    step, next_eval, solved = 0, config.eval_every, False
    while step < config.total_steps and not solved:
        obs_buf = torch.zeros((T, N, *obs_shape))
        act_buf = torch.zeros((T, N), dtype=torch.int64)
        rew_buf = torch.zeros((T, N))
        done_buf = torch.zeros((T, N))
        next_value_buf = torch.zeros((T, N))
        for t in range(T):
            obs_t = torch.as_tensor(obs, dtype=torch.float32)
            with torch.no_grad():
                actions = model.distribution(obs_t).sample()
            next_obs, rewards, terminated, truncated, info = envs.step(actions.numpy())
            # With same-step autoreset `next_obs` already holds the new episode's first
            # observation where one ended; the true last observation is in final_obs.
            real_next = next_obs.copy()
            if "_final_obs" in info:
                for i in np.flatnonzero(info["_final_obs"]):
                    real_next[i] = info["final_obs"][i]
            with torch.no_grad():
                next_values = model(torch.as_tensor(real_next, dtype=torch.float32))[1]
            # Bootstrap through time-limit truncations, not through real terminations.
            next_values = next_values * torch.as_tensor(1.0 - terminated, dtype=torch.float32)
            obs_buf[t], act_buf[t] = obs_t, actions
            rew_buf[t] = torch.as_tensor(rewards, dtype=torch.float32)
            done_buf[t] = torch.as_tensor(terminated | truncated, dtype=torch.float32)
            next_value_buf[t] = next_values
            episode_returns += rewards
            step += N
            for i in np.flatnonzero(terminated | truncated):
                run.episode_done(step, episode_returns[i])
                episode_returns[i] = 0.0
            obs = next_obs
        with torch.no_grad():
            values = model(obs_buf.flatten(0, 1))[1].view(T, N)
        advantages = gae(rew_buf, values, next_value_buf, done_buf, config.gamma, config.gae_lambda)
        returns = (advantages + values).flatten()
        policy_loss, value_loss = policy_gradient_losses(
            model, obs_buf.flatten(0, 1), act_buf.flatten(), returns, config.normalize_advantages,
            config.entropy_coef)
        optimizer.zero_grad(set_to_none=True)
        (policy_loss + config.value_coef * value_loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        if step >= next_eval:
            next_eval += config.eval_every
            solved = run.evaluate(step, model) and config.stop_when_solved
        run.show(step)
    envs.close()
    return run.finish(step, model)
