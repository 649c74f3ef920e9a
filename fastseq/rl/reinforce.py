"""REINFORCE (Monte-Carlo policy gradient) with a learned state-value baseline."""
import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from .envs import check_spaces, make_env
from .networks import build_network
from .training import TrainingRun, config_dict


@dataclasses.dataclass
class ReinforceConfig:
    total_steps: int = 300_000
    lr: float = 1e-3
    value_lr: float = 1e-3
    gamma: float = 0.99
    episodes_per_update: int = 2
    normalize_advantages: bool = True
    entropy_coef: float = 0.0
    grad_clip: float = 1.0
    hidden: tuple = (64, 64)
    eval_every: int = 10_000
    eval_episodes: int = 10
    confirm_episodes: int = 100
    stop_when_solved: bool = True

    def validate(self):
        checks = [("total_steps", self.total_steps >= 1), ("lr", self.lr > 0), ("value_lr", self.value_lr > 0),
                  ("gamma", 0 <= self.gamma <= 1), ("episodes_per_update", self.episodes_per_update >= 1),
                  ("eval_every", self.eval_every >= 1)]
        for name, ok in checks:
            if not ok:
                raise ValueError(f"ReinforceConfig.{name}: invalid value {getattr(self, name)!r}")


def discounted_returns(rewards, gamma):
    """G_t = r_t + gamma * G_{t+1}, computed backwards over one episode."""
    returns = np.zeros(len(rewards), dtype=np.float32)
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + gamma * running
        returns[t] = running
    return returns


def sample_action(logits, rng):
    """Categorical sample via the Gumbel-max trick (cheaper per step than torch.distributions)."""
    gumbel = -np.log(-np.log(rng.random(logits.shape[-1])))
    return int(np.argmax(logits + gumbel))


def policy_gradient_losses(model, obs, actions, returns, normalize, entropy_coef):
    """(policy loss, value loss) for a batch of states with their Monte-Carlo or n-step
    returns: the advantage is the return minus the learned value (the baseline)."""
    logits, values = model(obs)
    log_probs = F.log_softmax(logits, dim=1)
    chosen = log_probs.gather(1, actions.unsqueeze(1)).squeeze(1)
    advantages = returns - values.detach()
    if normalize and advantages.numel() > 1:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    entropy = -(log_probs.exp() * log_probs).sum(dim=1).mean()
    policy_loss = -(chosen * advantages).mean() - entropy_coef * entropy
    value_loss = F.mse_loss(values, returns)
    return policy_loss, value_loss


def train_reinforce(env_id, config=None, seed=0, out_dir="runs/reinforce", hide_velocity=False, history=1,
                    progress=True):
    config = config or ReinforceConfig()
    config.validate()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    env_spec = {"env_id": env_id, "hide_velocity": bool(hide_velocity), "history": int(history)}
    env = make_env(**env_spec)
    n_actions, obs_shape = check_spaces(env, "reinforce", env_id)
    spec = {"kind": "actor_critic", "obs_shape": list(obs_shape), "n_actions": n_actions,
            "kwargs": {"hidden": list(config.hidden)}}
    model = build_network(spec)
    policy_opt = torch.optim.Adam(model.policy.parameters(), lr=config.lr)
    value_opt = torch.optim.Adam(model.value.parameters(), lr=config.value_lr)
    target = env.spec.reward_threshold if env.spec is not None else None
    run = TrainingRun(algo="reinforce", env_spec=env_spec, network_spec=spec,
                      config=config_dict(config),
                      total_steps=config.total_steps, out_dir=out_dir, eval_episodes=config.eval_episodes,
                      confirm_episodes=config.confirm_episodes, target_return=target, progress=progress)
    step, next_eval, solved = 0, config.eval_every, False
    obs, _ = env.reset(seed=seed)
    batch_obs, batch_actions, batch_returns, episodes_in_batch = [], [], [], 0
    ep_rewards = []
    while step < config.total_steps and not solved:
        with torch.no_grad():
            logits = model.policy(torch.as_tensor(obs, dtype=torch.float32).reshape(1, -1))[0].numpy()
        action = sample_action(logits, rng)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        batch_obs.append(obs)
        batch_actions.append(action)
        ep_rewards.append(reward)
        obs = next_obs
        step += 1
        if terminated or truncated:
            # A time-limit cut is treated as the end: the Monte-Carlo return cannot see past it.
            batch_returns.append(discounted_returns(ep_rewards, config.gamma))
            run.episode_done(step, sum(ep_rewards))
            ep_rewards = []
            episodes_in_batch += 1
            obs, _ = env.reset()
            if episodes_in_batch == config.episodes_per_update:
                obs_t = torch.as_tensor(np.array(batch_obs), dtype=torch.float32)
                policy_loss, value_loss = policy_gradient_losses(
                    model, obs_t, torch.as_tensor(batch_actions), torch.from_numpy(np.concatenate(batch_returns)),
                    config.normalize_advantages, config.entropy_coef)
                policy_opt.zero_grad(set_to_none=True)
                value_opt.zero_grad(set_to_none=True)
                (policy_loss + value_loss).backward()  # the two nets share no parameters
                torch.nn.utils.clip_grad_norm_(model.policy.parameters(), config.grad_clip)
                torch.nn.utils.clip_grad_norm_(model.value.parameters(), config.grad_clip)
                policy_opt.step()
                value_opt.step()
                batch_obs, batch_actions, batch_returns, episodes_in_batch = [], [], [], 0
                # Evaluate between updates, never mid-batch.
                if step >= next_eval:
                    next_eval += config.eval_every
                    solved = run.evaluate(step, model) and config.stop_when_solved
            run.show(step)
    env.close()
    return run.finish(step, model)
