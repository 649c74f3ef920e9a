"""REINFORCE (Monte-Carlo policy gradient) with a learned state-value baseline."""
import dataclasses
import types

import numpy as np
import torch
import torch.nn.functional as F

from .envs import check_spaces, make_env
from .networks import build_network
from .settings import AT_LEAST_1, POSITIVE, UNIT, check
from .training import TrainingRun


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
        check(self, {"total_steps": AT_LEAST_1, "lr": POSITIVE, "value_lr": POSITIVE, "gamma": UNIT,
                     "episodes_per_update": AT_LEAST_1, "eval_every": AT_LEAST_1})


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


def policy_gradient_losses(model, obs, actions, returns, normalize, entropy_coef, dist=None):
    """(policy loss, value loss) for a batch of states with their Monte-Carlo or n-step
    returns: the advantage is the return minus the learned value (the baseline). With `dist`
    (fastseq.distributed, A2C's data-parallel learners) the advantages are normalised by the
    mean and std over every rank's batch, as one learner holding all of them would."""
    logits, values = model(obs)
    log_probs = F.log_softmax(logits, dim=1)
    chosen = log_probs.gather(1, actions.unsqueeze(1)).squeeze(1)
    advantages = returns - values.detach()
    if normalize and dist is not None and dist.enabled:
        total, squares, n = dist.all_sum([advantages.sum().item(), (advantages ** 2).sum().item(),
                                          advantages.numel()])
        if n > 1:
            mean = total / n
            std = max((squares - n * mean * mean) / (n - 1), 0.0) ** 0.5
            advantages = (advantages - mean) / (std + 1e-8)
    elif normalize and advantages.numel() > 1:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    entropy = -(log_probs.exp() * log_probs).sum(dim=1).mean()
    policy_loss = -(chosen * advantages).mean() - entropy_coef * entropy
    value_loss = F.mse_loss(values, returns)
    return policy_loss, value_loss


def train_reinforce(env_id, config=None, seed=0, out_dir="runs/reinforce", hide_velocity=False, history=1,
                    progress=True, device="cpu", **run_options):
    config = config or ReinforceConfig()
    config.validate()
    device = torch.device(device)
    env_spec = {"env_id": env_id, "hide_velocity": bool(hide_velocity), "history": int(history)}
    with TrainingRun(algo="reinforce", out_dir=out_dir, progress=progress, **run_options) as run:
        s = run.resumed_state()  # the loop's whole state, saved whole on an interrupt
        if s is None:
            torch.manual_seed(seed)
            env = make_env(**env_spec)
            n_actions, obs_shape = check_spaces(env, "reinforce", env_id)
            spec = {"kind": "actor_critic", "obs_shape": list(obs_shape), "n_actions": n_actions,
                    "kwargs": {"hidden": list(config.hidden)}}
            model = build_network(spec).to(device)
            s = types.SimpleNamespace(
                step=0, next_eval=config.eval_every, env=env, spec=spec, model=model,
                policy_opt=torch.optim.Adam(model.policy.parameters(), lr=config.lr),
                value_opt=torch.optim.Adam(model.value.parameters(), lr=config.value_lr),
                rng=np.random.default_rng(seed), obs=env.reset(seed=seed)[0],
                batch_obs=[], batch_actions=[], batch_returns=[], episodes_in_batch=0, ep_rewards=[])
        model = s.model
        target = s.env.spec.reward_threshold if s.env.spec is not None else None
        run.begin(env_spec=env_spec, network_spec=s.spec, config=config, model=model, step=s.step,
                  eval_episodes=config.eval_episodes, confirm_episodes=config.confirm_episodes,
                  target_return=target, device=device)
        solved = False
        while s.step < config.total_steps and not solved:
            with torch.no_grad():
                obs_t = torch.as_tensor(s.obs, dtype=torch.float32, device=device).reshape(1, -1)
                logits = model.policy(obs_t)[0].cpu().numpy()
            action = sample_action(logits, s.rng)
            next_obs, reward, terminated, truncated, _ = s.env.step(action)
            s.batch_obs.append(s.obs)
            s.batch_actions.append(action)
            s.ep_rewards.append(reward)
            s.obs = next_obs
            s.step += 1
            if terminated or truncated:
                # A time-limit cut is treated as the end: the Monte-Carlo return cannot see past it.
                s.batch_returns.append(discounted_returns(s.ep_rewards, config.gamma))
                run.episode_done(s.step, sum(s.ep_rewards))
                s.ep_rewards = []
                s.episodes_in_batch += 1
                s.obs, _ = s.env.reset()
                if s.episodes_in_batch == config.episodes_per_update:
                    obs_b = torch.as_tensor(np.array(s.batch_obs), dtype=torch.float32, device=device)
                    policy_loss, value_loss = policy_gradient_losses(
                        model, obs_b, torch.as_tensor(s.batch_actions, device=device),
                        torch.from_numpy(np.concatenate(s.batch_returns)).to(device),
                        config.normalize_advantages, config.entropy_coef)
                    s.policy_opt.zero_grad(set_to_none=True)
                    s.value_opt.zero_grad(set_to_none=True)
                    (policy_loss + value_loss).backward()  # the two nets share no parameters
                    torch.nn.utils.clip_grad_norm_(model.policy.parameters(), config.grad_clip)
                    torch.nn.utils.clip_grad_norm_(model.value.parameters(), config.grad_clip)
                    s.policy_opt.step()
                    s.value_opt.step()
                    run.update_done(s.step, (policy_loss + value_loss).item())
                    s.batch_obs, s.batch_actions, s.batch_returns, s.episodes_in_batch = [], [], [], 0
                    # Evaluate between updates, never mid-batch.
                    if s.step >= s.next_eval:
                        s.next_eval += config.eval_every
                        solved = run.evaluate(s.step, model) and config.stop_when_solved
                run.show(s.step)
            if not solved:
                run.check_stop(s.step, model, s)
        return run.finish(s.step, model, s)
