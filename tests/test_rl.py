"""Tests for fastseq.rl: tabular Bellman updates against a closed-form optimum, the replay
buffer, the learners' update rules, short seeded training runs, checkpoints and the CLI."""
import collections
import dataclasses

import numpy as np
import pytest
import torch

gym = pytest.importorskip("gymnasium")  # the `rl` extra

from fastseq import cli  # noqa: E402  (after the gymnasium check)
from fastseq.rl import (A2CConfig, ActorCritic, DQNConfig, HideVelocity, MLPQNet, RecurrentQNet,
                        ReinforceConfig, ReplayBuffer, LinearSchedule, load_checkpoint, make_env,
                        save_checkpoint, train_a2c, train_dqn, train_reinforce)
from fastseq.rl.a2c import gae
from fastseq.rl.dqn import DQNLearner
from fastseq.rl.evaluate import Evaluator, evaluate_policy
from fastseq.rl.reinforce import discounted_returns
from fastseq.rl.tabular import GridWorld, q_learning, value_iteration


# ---- tabular: Bellman optimum in closed form ----

def shortest_path_lengths(env):
    """Moves from every free cell to the goal, by breadth-first search from the goal."""
    dist = {env.goal: 0}
    queue = collections.deque([env.goal])
    while queue:
        r, c = queue.popleft()
        for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            nxt = (r + dr, c + dc)
            if nxt in env.index and nxt not in dist:
                dist[nxt] = dist[(r, c)] + 1
                queue.append(nxt)
    return np.array([dist[cell] for cell in env.cells])


def closed_form_optimum(env, gamma):
    """V*(s) = sum of discounted rewards along a shortest path: d-1 steps of step_reward,
    then goal_reward on entering the goal (d = path length, V*(goal) = 0)."""
    d = shortest_path_lengths(env)
    values = env.step_reward * (1 - gamma ** (d - 1)) / (1 - gamma) + gamma ** (d - 1) * env.goal_reward
    values[d == 0] = 0.0
    return values


GRIDS = {
    "open 5x5": dict(height=5, width=5, goal=(0, 4)),
    "walls 4x6": dict(height=4, width=6, goal=(3, 5), walls=[(0, 2), (1, 2), (2, 2), (2, 4), (3, 4)]),
}


@pytest.mark.parametrize("grid", GRIDS, ids=list(GRIDS))
@pytest.mark.parametrize("gamma", [0.9, 0.5])
def test_value_iteration_matches_closed_form_optimum(grid, gamma):
    env = GridWorld(**GRIDS[grid])
    values, policy, iterations = value_iteration(env, gamma=gamma)
    expected = closed_form_optimum(env, gamma)
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-12)
    # The greedy policy follows a shortest path: each move brings the goal one step closer.
    d = shortest_path_lengths(env)
    for s in range(env.n_states):
        if s != env.terminal:
            assert d[env.next_state[s, policy[s]]] == d[s] - 1
    assert iterations <= d.max() + 2  # deterministic shortest paths: exact after ~max distance sweeps


def test_value_iteration_closed_form_sanity():
    # Hand-checked corner of the open grid: the far corner (4, 0) is 8 moves from (0, 4).
    env = GridWorld(**GRIDS["open 5x5"])
    values, _, _ = value_iteration(env, gamma=0.9)
    expected = -sum(0.9 ** k for k in range(7)) + 0.9 ** 7 * 10
    assert values[env.index[(4, 0)]] == pytest.approx(expected, abs=1e-12)
    assert values[env.index[(0, 3)]] == pytest.approx(10.0, abs=1e-12)


@pytest.mark.parametrize("grid", GRIDS, ids=list(GRIDS))
def test_q_learning_converges_to_optimum(grid):
    env = GridWorld(**GRIDS[grid])
    q = q_learning(env, gamma=0.9, alpha=0.5, episodes=3000, seed=0)
    expected = closed_form_optimum(env, 0.9)
    non_terminal = np.arange(env.n_states) != env.terminal
    np.testing.assert_allclose(q.max(axis=1)[non_terminal], expected[non_terminal], atol=1e-6)


def test_gridworld_rejects_goal_in_wall():
    with pytest.raises(ValueError, match="goal"):
        GridWorld(goal=(1, 1), walls=[(1, 1)])


# ---- replay buffer ----

def filled_buffer(capacity, n, seed=0):
    buf = ReplayBuffer(capacity, (2,), seed=seed)
    for i in range(n):
        buf.add(np.array([i, -i]), i % 3, float(i), np.array([i + 1, -i - 1]), i % 2 == 0)
    return buf


def test_replay_buffer_wraps_and_keeps_latest():
    buf = filled_buffer(10, 25)
    assert len(buf) == 10 and buf.position == 5
    # Slot k holds the newest transition written there: items 20..24 in slots 0..4, 15..19 in 5..9.
    assert buf.obs[:, 0].tolist() == [20, 21, 22, 23, 24, 15, 16, 17, 18, 19]
    assert buf.next_obs[:, 0].tolist() == [i + 1 for i in buf.obs[:, 0]]
    assert buf.rewards.tolist() == buf.obs[:, 0].tolist()
    assert buf.terminated.tolist() == [float(i % 2 == 0) for i in buf.obs[:, 0]]


def test_replay_buffer_samples_fields_aligned_and_only_filled_slots():
    buf = filled_buffer(10, 3)
    obs, actions, rewards, next_obs, terminated = buf.sample(500)
    assert obs.dtype == torch.float32 and actions.dtype == torch.int64 and obs.shape == (500, 2)
    assert set(rewards.tolist()) <= {0.0, 1.0, 2.0}
    torch.testing.assert_close(obs[:, 0], rewards)
    torch.testing.assert_close(next_obs[:, 0], rewards + 1)
    torch.testing.assert_close(actions, rewards.long() % 3)
    torch.testing.assert_close(terminated, (rewards.long() % 2 == 0).float())


def test_replay_buffer_samples_uniformly():
    buf = filled_buffer(10, 25, seed=1234)
    draws = 100_000
    _, _, rewards, _, _ = buf.sample(draws)
    counts = np.bincount(rewards.long().numpy(), minlength=25)
    assert counts[:15].sum() == 0  # overwritten transitions are never drawn
    observed = counts[15:]
    expected = draws / 10
    chi2 = ((observed - expected) ** 2 / expected).sum()
    # 99.9% quantile of chi-square with 9 degrees of freedom: a uniform sampler exceeds it
    # with probability 0.001 (the seed is fixed, so the test is deterministic).
    assert chi2 < 27.877, f"chi2={chi2:.1f}, counts={observed.tolist()}"
    # And a clearly non-uniform sampler would fail the same bound.
    skewed = observed.astype(float).copy()
    skewed[0] *= 1.05
    skewed[1] *= 0.95
    assert ((skewed - expected) ** 2 / expected).sum() > 27.877


def test_replay_buffer_errors():
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(0, (2,))
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(4, (2,)).sample(1)


def test_linear_schedule():
    sched = LinearSchedule(1.0, 0.1, 100)
    assert sched(0) == 1.0 and sched(50) == pytest.approx(0.55) and sched(100) == pytest.approx(0.1)
    assert sched(10_000) == pytest.approx(0.1)


# ---- update rules ----

def test_dqn_targets_and_double_dqn():
    torch.manual_seed(0)
    qnet = MLPQNet((3,), 2, hidden=(8,))
    learner = DQNLearner(qnet, DQNConfig(gamma=0.9, double=False))
    with torch.no_grad():
        for p in learner.target.parameters():
            p.add_(torch.randn_like(p))
    next_obs = torch.randn(6, 3)
    rewards, terminated = torch.arange(6.0), torch.tensor([0.0, 1, 0, 0, 1, 0])
    target_q = learner.target(next_obs)
    expected = rewards + 0.9 * (1 - terminated) * target_q.max(1).values
    torch.testing.assert_close(learner.td_targets(rewards, next_obs, terminated), expected)
    learner.config = DQNConfig(gamma=0.9, double=True)
    chosen = qnet(next_obs).argmax(1, keepdim=True)
    expected = rewards + 0.9 * (1 - terminated) * target_q.gather(1, chosen).squeeze(1)
    torch.testing.assert_close(learner.td_targets(rewards, next_obs, terminated), expected)


def test_dqn_polyak_and_hard_target_updates():
    torch.manual_seed(0)
    qnet = MLPQNet((3,), 2, hidden=(8,))
    learner = DQNLearner(qnet, DQNConfig(tau=0.25))
    before = [p.detach().clone() for p in learner.target.parameters()]
    batch = (torch.randn(4, 3), torch.tensor([0, 1, 1, 0]), torch.ones(4), torch.randn(4, 3), torch.zeros(4))
    learner.update(batch)
    for old, target, online in zip(before, learner.target.parameters(), qnet.parameters()):
        torch.testing.assert_close(target, old + 0.25 * (online.detach() - old))
    learner.sync_target()
    for target, online in zip(learner.target.parameters(), qnet.parameters()):
        assert torch.equal(target, online)
        assert not target.requires_grad


def test_discounted_returns_and_gae():
    np.testing.assert_allclose(discounted_returns([1.0, 1.0, 1.0], 0.5), [1.75, 1.5, 1.0])
    torch.manual_seed(0)
    T, N, gamma = 5, 3, 0.9
    rewards, values, next_values = torch.randn(T, N), torch.randn(T, N), torch.randn(T, N)
    dones = torch.zeros(T, N)
    dones[2, 1] = 1.0
    # Consistent rollout: V(s_{t+1}) is next_values[t] unless the episode ended at t.
    for t in range(T - 1):
        next_values[t] = torch.where(dones[t] > 0, next_values[t], values[t + 1])
    # lambda = 1: advantages are the n-step discounted returns to the rollout end (or episode end) minus V.
    adv = gae(rewards, values, next_values, dones, gamma, 1.0)
    for n in range(N):
        for t in range(T):
            ret, discount, k = 0.0, 1.0, t
            while True:
                ret += discount * rewards[k, n]
                if dones[k, n] or k == T - 1:
                    ret += discount * gamma * next_values[k, n]
                    break
                discount *= gamma
                k += 1
            assert adv[t, n].item() == pytest.approx((ret - values[t, n]).item(), abs=1e-5)
    # lambda = 0: one-step TD errors.
    torch.testing.assert_close(gae(rewards, values, next_values, dones, gamma, 0.0),
                               rewards + gamma * next_values - values)


# ---- environments and networks ----

def test_hide_velocity_and_history():
    env = make_env("CartPole-v1", hide_velocity=True, history=4)
    obs, _ = env.reset(seed=3)
    assert obs.shape == (4, 2) and env.observation_space.shape == (4, 2)
    full = gym.make("CartPole-v1")
    full_obs, _ = full.reset(seed=3)
    np.testing.assert_array_equal(obs[-1], full_obs[[0, 2]])
    with pytest.raises(ValueError, match="HideVelocity"):
        HideVelocity(gym.make("Acrobot-v1"))


def test_recurrent_qnet_reads_history():
    torch.manual_seed(0)
    net = RecurrentQNet((8, 2), 2)
    assert net(torch.randn(5, 8, 2)).shape == (5, 2)
    history = torch.randn(1, 8, 2)
    changed = history.clone()
    changed[0, 0] += 1.0  # the oldest observation still matters
    assert not torch.allclose(net(history), net(changed))
    with pytest.raises(ValueError, match="obs_shape"):
        RecurrentQNet((4,), 2)


class FixedPolicy(torch.nn.Module):
    def greedy(self, obs):
        return (obs[:, 2] + 0.5 * obs[:, 3] > 0).long()  # a reasonable hand-made CartPole policy


def test_vectorised_evaluation_matches_sequential_episodes():
    spec = {"env_id": "CartPole-v1", "hide_velocity": False, "history": 1}
    batched = Evaluator(spec, 5).run(FixedPolicy(), seed=7)
    for i in range(5):
        env = make_env(**spec)
        obs, _ = env.reset(seed=7 + i)
        total, done = 0.0, False
        while not done:
            action = int(FixedPolicy().greedy(torch.as_tensor(obs)[None])[0])
            obs, r, term, trunc, _ = env.step(action)
            total, done = total + r, term or trunc
        assert batched[i] == total


# ---- short seeded training runs (no timing) ----

def random_policy_mean(episodes=50, seed=0):
    env = gym.make("CartPole-v1")
    env.action_space.seed(seed)
    total = 0.0
    for i in range(episodes):
        env.reset(seed=seed + i)
        done = False
        while not done:
            _, r, term, trunc, _ = env.step(env.action_space.sample())
            total, done = total + r, term or trunc
    return total / episodes


@pytest.fixture(scope="module")
def short_dqn_run(tmp_path_factory):
    torch.set_num_threads(1)
    config = DQNConfig(total_steps=10_000, eval_every=2_500, eps_fraction=0.16)
    out = tmp_path_factory.mktemp("dqn")
    return train_dqn("CartPole-v1", config, seed=0, out_dir=str(out), progress=False), out


def test_short_dqn_run_beats_random_policy(short_dqn_run):
    summary, out = short_dqn_run
    model, _ = load_checkpoint(summary["best_path"])
    trained = evaluate_policy(model, {"env_id": "CartPole-v1", "hide_velocity": False, "history": 1},
                              episodes=20).mean()
    random_mean = random_policy_mean()
    assert random_mean < 30  # CartPole's random policy lasts ~22 steps
    assert trained > 5 * random_mean, (trained, random_mean)
    assert (out / "returns.png").stat().st_size > 1000
    assert (out / "last.pt").exists()


def test_short_reinforce_run_beats_random_policy(tmp_path):
    torch.set_num_threads(1)
    config = ReinforceConfig(total_steps=15_000, eval_every=5_000)
    summary = train_reinforce("CartPole-v1", config, seed=0, out_dir=str(tmp_path), progress=False)
    model, payload = load_checkpoint(summary["best_path"])
    assert payload["algo"] == "reinforce"
    trained = evaluate_policy(model, payload["env"], episodes=20).mean()
    assert trained > 5 * random_policy_mean(), trained


def test_short_a2c_run_beats_random_policy(tmp_path):
    torch.set_num_threads(1)
    config = A2CConfig(total_steps=20_000, eval_every=5_000)
    summary = train_a2c("CartPole-v1", config, seed=0, out_dir=str(tmp_path), progress=False)
    model, payload = load_checkpoint(summary["best_path"])
    trained = evaluate_policy(model, payload["env"], episodes=20).mean()
    assert trained > 3 * random_policy_mean(), trained


def test_recurrent_dqn_on_hidden_velocity_cartpole_runs(tmp_path):
    config = DQNConfig(total_steps=1_500, learning_starts=500, train_every=64, gradient_steps=8,
                       network="lstm", eval_every=1_000, eval_episodes=3, confirm_episodes=0)
    summary = train_dqn("CartPole-v1", config, seed=0, out_dir=str(tmp_path), hide_velocity=True,
                        history=4, progress=False)
    model, payload = load_checkpoint(summary["last_path"])
    assert isinstance(model, RecurrentQNet)
    assert payload["env"] == {"env_id": "CartPole-v1", "hide_velocity": True, "history": 4}
    assert summary["steps"] == 1_500


# ---- checkpoints ----

@pytest.mark.parametrize("kind,obs_shape,make", [
    ("mlp_q", (4,), lambda: MLPQNet((4,), 2, hidden=(16, 16))),
    ("lstm_q", (6, 2), lambda: RecurrentQNet((6, 2), 3, lstm_hidden=8, hidden=(8,))),
    ("actor_critic", (4,), lambda: ActorCritic((4,), 2, hidden=(16,))),
])
def test_checkpoint_round_trip(tmp_path, kind, obs_shape, make):
    torch.manual_seed(1)
    model = make()
    kwargs = {"mlp_q": {"hidden": [16, 16]}, "lstm_q": {"lstm_hidden": 8, "hidden": [8]},
              "actor_critic": {"hidden": [16]}}[kind]
    spec = {"kind": kind, "obs_shape": list(obs_shape), "n_actions": model(torch.zeros(1, *obs_shape))[0].shape[-1]
            if kind != "actor_critic" else 2, "kwargs": kwargs}
    path = str(tmp_path / "agent.pt")
    env = {"env_id": "CartPole-v1", "hide_velocity": False, "history": 1}
    save_checkpoint(path, algo="dqn", env=env, network_spec=spec, model=model,
                    config=dataclasses.asdict(DQNConfig()) | {"hidden": [256, 256]}, stats={"step": 42})
    loaded, payload = load_checkpoint(path)
    assert type(loaded) is type(model) and not loaded.training
    assert payload["env"] == env and payload["stats"]["step"] == 42
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    x = torch.randn(3, *obs_shape)
    model.eval()
    out, back = model(x), loaded(x)
    for a, b in zip(out if isinstance(out, tuple) else (out,), back if isinstance(back, tuple) else (back,)):
        assert torch.equal(a, b)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_checkpoint(str(tmp_path / "missing.pt"))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="not a fastseq RL checkpoint"):
        load_checkpoint(str(garbage))
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ValueError, match="not a fastseq RL checkpoint"):
        load_checkpoint(str(foreign))


# ---- CLI ----

def run_cli(argv, capsys):
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_train_and_eval_round_trip(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(["train", "reinforce", "--steps", "600", "--seed", "1", "--out", str(out),
                               "--no-progress", "--eval-episodes", "3", "--set", "eval_every=300"], capsys)
    assert code == 0 and "greedy evaluation" in stdout
    assert (out / "best.pt").exists() and (out / "returns.png").exists()
    code, stdout, _ = run_cli(["eval", "--checkpoint", str(out / "best.pt"), "--episodes", "3"], capsys)
    assert code == 0 and "mean return over 3 greedy episodes" in stdout


@pytest.mark.parametrize("argv,message", [
    (["train", "dqn", "--env", "NoSuchEnv-v0", "--steps", "10"], "unknown or unavailable environment 'NoSuchEnv-v0'"),
    (["train", "dqn", "--env", "Pendulum-v1", "--steps", "10"], "dqn needs a Discrete action space"),
    (["train", "a2c", "--env", "MountainCarContinuous-v0", "--steps", "10"], "a2c needs a Discrete action space"),
    (["train", "dqn", "--set", "total_steps=0"], "--steps: expected an integer >= 1, got 0"),
    (["train", "dqn", "--set", "nonsense=1"], "dqn has no setting 'nonsense'"),
    (["train", "dqn", "--set", "double=maybe"], "expected a bool"),
    (["train", "dqn", "--network", "lstm", "--history", "1", "--steps", "10"], "needs an observation history"),
    (["train", "reinforce", "--env", "Acrobot-v1", "--hide-velocity"], "HideVelocity expects"),
    (["eval", "--checkpoint", "/nonexistent/agent.pt"], "no such file"),
])
def test_cli_bad_input_gives_clear_errors(tmp_path, capsys, argv, message):
    argv = argv + (["--out", str(tmp_path / "run"), "--no-progress"] if argv[0] == "train" else [])
    code, _, err = run_cli(argv, capsys)
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_cli_eval_rejects_a_foreign_checkpoint(tmp_path, capsys):
    path = tmp_path / "model.pt"
    torch.save({"state_dict": {}}, path)
    code, _, err = run_cli(["eval", "--checkpoint", str(path)], capsys)
    assert code == 2 and "not a fastseq RL checkpoint" in err
