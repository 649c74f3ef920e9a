"""Tabular reference methods on a small deterministic grid world: value iteration and
Q-learning, used to check the Bellman update against the exact optimum."""
import numpy as np

# Actions: up, right, down, left as (row, col) moves.
MOVES = ((-1, 0), (0, 1), (1, 0), (0, -1))


class GridWorld:
    """Deterministic grid: every move costs `step_reward`; entering the goal earns
    `goal_reward` and ends the episode. Moves into a wall or off the grid stay put."""

    def __init__(self, height=5, width=5, goal=(0, 4), walls=(), step_reward=-1.0, goal_reward=10.0):
        self.height, self.width, self.goal = int(height), int(width), tuple(goal)
        self.walls = {tuple(w) for w in walls}
        if not (0 <= self.goal[0] < self.height and 0 <= self.goal[1] < self.width) or self.goal in self.walls:
            raise ValueError(f"GridWorld: goal {self.goal} must be a free cell of the {height}x{width} grid")
        self.step_reward, self.goal_reward = float(step_reward), float(goal_reward)
        self.cells = [(r, c) for r in range(self.height) for c in range(self.width) if (r, c) not in self.walls]
        self.index = {cell: i for i, cell in enumerate(self.cells)}
        self.n_states, self.n_actions = len(self.cells), len(MOVES)
        # Transition tables: next state, reward and termination for every (state, action).
        self.next_state = np.zeros((self.n_states, self.n_actions), dtype=np.int64)
        self.reward = np.zeros((self.n_states, self.n_actions))
        self.done = np.zeros((self.n_states, self.n_actions), dtype=bool)
        for s, (r, c) in enumerate(self.cells):
            for a, (dr, dc) in enumerate(MOVES):
                nxt = (r + dr, c + dc)
                if nxt not in self.index:
                    nxt = (r, c)
                self.next_state[s, a] = self.index[nxt]
                self.done[s, a] = nxt == self.goal
                self.reward[s, a] = self.goal_reward if nxt == self.goal else self.step_reward

    @property
    def terminal(self):
        return self.index[self.goal]


def bellman_backup(env, values, gamma):
    """Q(s, a) = r(s, a) + gamma * V(s') for non-terminating moves, r(s, a) otherwise."""
    return env.reward + gamma * np.where(env.done, 0.0, values[env.next_state])


def value_iteration(env, gamma=0.9, tol=1e-12, max_iters=10_000):
    """Returns (V*, greedy policy, iterations). The goal state is terminal (value 0)."""
    values = np.zeros(env.n_states)
    for iteration in range(1, max_iters + 1):
        q = bellman_backup(env, values, gamma)
        new_values = q.max(axis=1)
        new_values[env.terminal] = 0.0
        delta = np.max(np.abs(new_values - values))
        values = new_values
        if delta <= tol:
            break
    return values, bellman_backup(env, values, gamma).argmax(axis=1), iteration


def q_learning(env, gamma=0.9, alpha=0.5, episodes=3000, max_steps=100, epsilon=1.0, seed=0):
    """Off-policy Q-learning with exploring starts and an epsilon-greedy behaviour policy;
    returns the Q table. With epsilon = 1 (uniform behaviour) every pair keeps being
    visited, which is what convergence to Q* needs."""
    rng = np.random.default_rng(seed)
    q = np.zeros((env.n_states, env.n_actions))
    starts = [s for s in range(env.n_states) if s != env.terminal]
    for _ in range(episodes):
        s = starts[rng.integers(len(starts))]
        for _ in range(max_steps):
            a = int(rng.integers(env.n_actions)) if rng.random() < epsilon else int(q[s].argmax())
            s2, r, done = env.next_state[s, a], env.reward[s, a], env.done[s, a]
            target = r if done else r + gamma * q[s2].max()
            q[s, a] += alpha * (target - q[s, a])
            if done:
                break
            s = s2
    return q
