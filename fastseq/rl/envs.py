"""Gymnasium environment construction for the agents: clear errors for unknown ids and
unsupported spaces, and the partially observable CartPole (velocities hidden)."""
import gymnasium as gym
import numpy as np


class HideVelocity(gym.ObservationWrapper):
    """CartPole with the cart and pole velocities removed: the observation is (x, theta).

    Without velocities a single observation does not determine the state (a POMDP); an
    agent must infer motion from its observation history (see RecurrentQNet)."""

    KEEP = [0, 2]

    def __init__(self, env):
        super().__init__(env)
        space = env.observation_space
        if not (isinstance(space, gym.spaces.Box) and space.shape == (4,)):
            raise ValueError(f"HideVelocity expects CartPole's Box observation of shape (4,), got {space}")
        self.observation_space = gym.spaces.Box(space.low[self.KEEP], space.high[self.KEEP], dtype=space.dtype)

    def observation(self, observation):
        return observation[self.KEEP]


def make_env(env_id, hide_velocity=False, history=1, **kwargs):
    """gym.make(env_id) plus the optional velocity mask and an observation-history stack.

    history > 1 stacks the last `history` observations into shape (history, obs_dim),
    padded with the reset observation at the start of an episode."""
    try:
        env = gym.make(env_id, **kwargs)
    except gym.error.Error as exc:
        raise ValueError(f"unknown or unavailable environment {env_id!r} ({exc}); "
                         f"try e.g. CartPole-v1, Acrobot-v1 or MountainCar-v0") from None
    if hide_velocity:
        env = HideVelocity(env)
    if history > 1:
        env = gym.wrappers.FrameStackObservation(env, int(history))
    return env


def check_spaces(env, algo, env_id):
    """The agents here take vector observations and choose among discrete actions."""
    action_space, obs_space = env.action_space, env.observation_space
    if not isinstance(action_space, gym.spaces.Discrete):
        raise ValueError(f"{algo} needs a Discrete action space, but {env_id} has {action_space} "
                         f"(continuous actions are not supported by this agent)")
    if not (isinstance(obs_space, gym.spaces.Box) and np.issubdtype(obs_space.dtype, np.floating)):
        raise ValueError(f"{algo} needs a float Box observation space, but {env_id} has {obs_space}")
    return int(action_space.n), tuple(obs_space.shape)
