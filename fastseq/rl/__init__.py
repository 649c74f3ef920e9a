"""Reinforcement learning on fastseq layers: DQN (MLP or LSTM Q-network), REINFORCE with a
learned baseline, A2C over vectorised environments, and tabular value iteration / Q-learning."""
from .replay import ReplayBuffer
from .schedules import LinearSchedule
from .envs import HideVelocity, make_env
from .networks import ActorCritic, MLPQNet, RecurrentQNet, build_network
from .dqn import DQNConfig, train_dqn
from .reinforce import ReinforceConfig, train_reinforce
from .a2c import A2CConfig, train_a2c
from .checkpoint import load_checkpoint, save_checkpoint
from .evaluate import evaluate_checkpoint, evaluate_policy

__all__ = [
    "ReplayBuffer", "LinearSchedule", "HideVelocity", "make_env",
    "ActorCritic", "MLPQNet", "RecurrentQNet", "build_network",
    "DQNConfig", "train_dqn", "ReinforceConfig", "train_reinforce", "A2CConfig", "train_a2c",
    "load_checkpoint", "save_checkpoint", "evaluate_checkpoint", "evaluate_policy",
]
