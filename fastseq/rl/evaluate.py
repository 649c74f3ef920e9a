"""Greedy evaluation: N environments stepped in lockstep, one episode each, with one
batched forward pass per step."""
import numpy as np
import torch

from .checkpoint import load_checkpoint
from .envs import make_env


class Evaluator:
    """Holds `episodes` environments so periodic evaluations do not rebuild them."""

    def __init__(self, env_spec, episodes):
        if int(episodes) < 1:
            raise ValueError(f"episodes must be >= 1, got {episodes}")
        self.envs = [make_env(**env_spec) for _ in range(int(episodes))]

    @torch.no_grad()
    def run(self, policy, seed):
        """Mean-able array of each episode's return; episode i resets with seed + i."""
        envs = self.envs
        device = next(policy.parameters(), torch.empty(0)).device  # a parameter-free policy: cpu
        obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]
        returns = np.zeros(len(envs))
        active = list(range(len(envs)))
        while active:
            batch = torch.as_tensor(np.stack([obs[i] for i in active]), dtype=torch.float32, device=device)
            actions = policy.greedy(batch).tolist()
            still = []
            for i, action in zip(active, actions):
                obs[i], reward, terminated, truncated, _ = envs[i].step(action)
                returns[i] += reward
                if not (terminated or truncated):
                    still.append(i)
            active = still
        return returns

    def close(self):
        for env in self.envs:
            env.close()


def evaluate_policy(policy, env_spec, episodes=100, seed=10**6):
    evaluator = Evaluator(env_spec, episodes)
    was_training = policy.training
    policy.eval()
    try:
        return evaluator.run(policy, seed)
    finally:
        policy.train(was_training)
        evaluator.close()


def evaluate_checkpoint(path, episodes=100, seed=10**6):
    """Returns (returns array, checkpoint payload)."""
    model, payload = load_checkpoint(path)
    return evaluate_policy(model, payload["env"], episodes, seed), payload
