"""The agents' networks, written on fastseq layers (`fastseq.nn` is a drop-in torch.nn, so
the fused LSTM is picked up wherever fastseq provides it)."""
import math

import torch

import fastseq.nn as nn


def mlp(in_dim, out_dim, hidden):
    layers, width = [], in_dim
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


class MLPQNet(nn.Module):
    """Q(s, .) from a (flattened) observation: one output per action."""

    def __init__(self, obs_shape, n_actions, hidden=(256, 256)):
        super().__init__()
        self.net = mlp(math.prod(obs_shape), n_actions, hidden)

    def forward(self, obs):
        return self.net(obs.flatten(1))

    def greedy(self, obs):
        return self(obs).argmax(dim=1)


class RecurrentQNet(nn.Module):
    """Q(h, .) from the recent observation history h of shape (batch, history, obs_dim):
    an LSTM reads the history and the last hidden state feeds an MLP head. For partially
    observable tasks, where one observation does not determine the state."""

    def __init__(self, obs_shape, n_actions, lstm_hidden=64, hidden=(128,)):
        super().__init__()
        if len(obs_shape) != 2:
            raise ValueError(f"RecurrentQNet: obs_shape must be (history, obs_dim), got {tuple(obs_shape)}")
        self.lstm = nn.LSTM(obs_shape[1], lstm_hidden, batch_first=True)
        self.head = mlp(lstm_hidden, n_actions, hidden)

    def forward(self, obs):
        out, _ = self.lstm(obs)
        return self.head(out[:, -1])

    def greedy(self, obs):
        return self(obs).argmax(dim=1)


class ActorCritic(nn.Module):
    """A categorical policy and a state-value function, as two separate MLPs (sharing a
    trunk lets the value loss disturb the policy on small tasks). REINFORCE uses the value
    head as its learned baseline; A2C as its critic."""

    def __init__(self, obs_shape, n_actions, hidden=(64, 64)):
        super().__init__()
        in_dim = math.prod(obs_shape)
        self.policy = mlp(in_dim, n_actions, hidden)
        self.value = mlp(in_dim, 1, hidden)
        # Small last-layer weights start the policy near uniform (a common PG practice).
        with torch.no_grad():
            self.policy[-1].weight.mul_(0.01)

    def forward(self, obs):
        obs = obs.flatten(1)
        return self.policy(obs), self.value(obs).squeeze(1)

    def distribution(self, obs):
        return torch.distributions.Categorical(logits=self.policy(obs.flatten(1)))

    def greedy(self, obs):
        return self.policy(obs.flatten(1)).argmax(dim=1)


NETWORKS = {"mlp_q": MLPQNet, "lstm_q": RecurrentQNet, "actor_critic": ActorCritic}


def build_network(spec):
    """Rebuild a network from its checkpoint spec {"kind", "obs_shape", "n_actions", "kwargs"}."""
    kind = spec.get("kind")
    if kind not in NETWORKS:
        raise ValueError(f"unknown network kind {kind!r}; expected one of {sorted(NETWORKS)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.get("kwargs", {}).items()}
    return NETWORKS[kind](tuple(spec["obs_shape"]), int(spec["n_actions"]), **kwargs)
