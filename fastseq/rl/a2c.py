"""Advantage actor-critic (A2C): synchronous n-step rollouts over gymnasium.vector envs,
advantages from generalised advantage estimation (lambda = 1 gives plain n-step returns).
Under torchrun the learners are data-parallel: each rank steps num_envs / world_size of the
environments, and one update (DistributedDataParallel) learns from all ranks' rollouts."""
import dataclasses
import functools
import types

import gymnasium as gym
import numpy as np
import torch

from .. import distributed
from .envs import check_spaces, make_env
from .networks import build_network
from .reinforce import policy_gradient_losses
from .settings import AT_LEAST_1, POSITIVE, UNIT, check
from .training import TrainingRun


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
        check(self, {"total_steps": AT_LEAST_1, "num_envs": AT_LEAST_1, "rollout_steps": AT_LEAST_1,
                     "lr": POSITIVE, "gamma": UNIT, "gae_lambda": UNIT, "eval_every": AT_LEAST_1})


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


def train_a2c(env_id, config=None, seed=0, out_dir="runs/a2c", hide_velocity=False, history=1, progress=True,
              device="cpu", **run_options):
    config = config or A2CConfig()
    config.validate()
    dist = distributed.current()
    device = torch.device(dist.device if dist.enabled else device)
    n_local = dist.local_batch(config.num_envs, "--num-envs")  # this rank's share of the environments
    env_spec = {"env_id": env_id, "hide_velocity": bool(hide_velocity), "history": int(history)}
    with TrainingRun(algo="a2c", out_dir=out_dir, progress=progress, **run_options) as run:
        s = run.resumed_state()  # the loop's whole state, saved whole on an interrupt
        if s is None:
            torch.manual_seed(seed)
            probe = make_env(**env_spec)
            n_actions, obs_shape = check_spaces(probe, "a2c", env_id)
            target = probe.spec.reward_threshold if probe.spec is not None else None
            probe.close()
            # functools.partial, not a lambda: the vector env must pickle into resume.pt.
            envs = gym.vector.SyncVectorEnv([functools.partial(make_env, **env_spec)] * n_local,
                                            autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
            spec = {"kind": "actor_critic", "obs_shape": list(obs_shape), "n_actions": n_actions,
                    "kwargs": {"hidden": list(config.hidden)}}
            model = build_network(spec).to(device)  # the same weights on every rank (--seed)
            dist.seed_rank(seed)  # but each rank samples its own actions
            s = types.SimpleNamespace(
                step=0, next_eval=config.eval_every, envs=envs, spec=spec, model=model, target=target,
                obs_shape=obs_shape, optimizer=torch.optim.Adam(model.parameters(), lr=config.lr),
                # Environment i of the whole set is seeded seed + i, whichever rank steps it.
                obs=envs.reset(seed=seed + dist.rank * n_local)[0], episode_returns=np.zeros(n_local))
        model = s.model
        learner = dist.wrap(model)  # the update goes through DDP; acting uses the model itself
        run.begin(env_spec=env_spec, network_spec=s.spec, config=config, model=model, step=s.step,
                  eval_episodes=config.eval_episodes, confirm_episodes=config.confirm_episodes,
                  target_return=s.target, device=device)
        T, N = config.rollout_steps, n_local
        solved = False
        while s.step < config.total_steps and not solved:
            obs_buf = torch.zeros((T, N, *s.obs_shape), device=device)
            act_buf = torch.zeros((T, N), dtype=torch.int64, device=device)
            rew_buf = torch.zeros((T, N), device=device)
            done_buf = torch.zeros((T, N), device=device)
            next_value_buf = torch.zeros((T, N), device=device)
            ended = []  # (step, return) of the episodes this rank finished in this rollout
            for t in range(T):
                obs_t = torch.as_tensor(s.obs, dtype=torch.float32, device=device)
                with torch.no_grad():
                    actions = model.distribution(obs_t).sample()
                next_obs, rewards, terminated, truncated, info = s.envs.step(actions.cpu().numpy())
                # With same-step autoreset `next_obs` already holds the new episode's first
                # observation where one ended; the true last observation is in final_obs.
                real_next = next_obs.copy()
                if "_final_obs" in info:
                    for i in np.flatnonzero(info["_final_obs"]):
                        real_next[i] = info["final_obs"][i]
                with torch.no_grad():
                    next_values = model(torch.as_tensor(real_next, dtype=torch.float32, device=device))[1]
                # Bootstrap through time-limit truncations, not through real terminations.
                next_values = next_values * torch.as_tensor(1.0 - terminated, dtype=torch.float32, device=device)
                obs_buf[t], act_buf[t] = obs_t, actions
                rew_buf[t] = torch.as_tensor(rewards, dtype=torch.float32, device=device)
                done_buf[t] = torch.as_tensor(terminated | truncated, dtype=torch.float32, device=device)
                next_value_buf[t] = next_values
                s.episode_returns += rewards
                s.step += config.num_envs  # environment steps over all ranks
                for i in np.flatnonzero(terminated | truncated):
                    ended.append((s.step, float(s.episode_returns[i])))
                    s.episode_returns[i] = 0.0
                s.obs = next_obs
            # Every rank's finished episodes in step order (stable: rank, then environment),
            # recorded on every rank alike.
            gathered = [e for part in dist.gather(ended) for e in part]
            for step, episode_return in sorted(gathered, key=lambda e: e[0]):
                run.episode_done(step, episode_return)
            with torch.no_grad():
                values = model(obs_buf.flatten(0, 1))[1].view(T, N)
            advantages = gae(rew_buf, values, next_value_buf, done_buf, config.gamma, config.gae_lambda)
            returns = (advantages + values).flatten()
            policy_loss, value_loss = policy_gradient_losses(
                learner, obs_buf.flatten(0, 1), act_buf.flatten(), returns, config.normalize_advantages,
                config.entropy_coef, dist)
            loss = policy_loss + config.value_coef * value_loss
            s.optimizer.zero_grad(set_to_none=True)
            loss.backward()  # equal rollouts per rank: DDP's average is the whole batch's gradient
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            s.optimizer.step()
            run.update_done(s.step, dist.all_sum([dist.share(loss.item())])[0])
            if s.step >= s.next_eval:
                s.next_eval += config.eval_every
                solved = run.evaluate(s.step, model) and config.stop_when_solved
            run.show(s.step)
            if not solved:
                run.check_stop(s.step, model, s)
        return run.finish(s.step, model, s)
