"""Experience replay for DQN: a ring buffer of preallocated arrays with uniform sampling."""
import numpy as np
import torch


class ReplayBuffer:
    """Fixed-capacity ring buffer of (obs, action, reward, next_obs, terminated) transitions.

    Storage is preallocated numpy arrays (one write per field per step, no Python lists);
    a sampled batch is one fancy-indexing gather per field, returned as torch tensors.
    Only `terminated` (not time-limit truncation) is stored: a truncated episode still
    bootstraps from its next observation.
    """

    def __init__(self, capacity, obs_shape, seed=None, obs_dtype=np.float32):
        if int(capacity) < 1:
            raise ValueError(f"ReplayBuffer: capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.obs = np.zeros((self.capacity, *obs_shape), dtype=obs_dtype)
        self.next_obs = np.zeros((self.capacity, *obs_shape), dtype=obs_dtype)
        self.actions = np.zeros(self.capacity, dtype=np.int64)
        self.rewards = np.zeros(self.capacity, dtype=np.float32)
        self.terminated = np.zeros(self.capacity, dtype=np.float32)
        self.position = 0  # next slot to write
        self.size = 0
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        return self.size

    def add(self, obs, action, reward, next_obs, terminated):
        i = self.position
        self.obs[i] = obs
        self.next_obs[i] = next_obs
        self.actions[i] = action
        self.rewards[i] = reward
        self.terminated[i] = terminated
        self.position = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample_indices(self, batch_size):
        if self.size == 0:
            raise ValueError("ReplayBuffer.sample: the buffer is empty")
        # With replacement: each index is uniform on the filled slots, independently.
        return self.rng.integers(0, self.size, size=batch_size)

    def sample(self, batch_size):
        idx = self.sample_indices(batch_size)
        return (torch.from_numpy(self.obs[idx]), torch.from_numpy(self.actions[idx]),
                torch.from_numpy(self.rewards[idx]), torch.from_numpy(self.next_obs[idx]),
                torch.from_numpy(self.terminated[idx]))
