"""Training on several processes (fastseq.distributed): two CPU processes on 127.0.0.1 (one
thread each, bounded in time) against one. After N steps both ranks hold the same
parameters; with the same global batch the loss history of two processes is the one of one
process (charlm, gpt, --impl torch, cnn); one run folder is written; a failure or a signal on
one rank ends both; a distributed run resumes (also in one process). Launches start each rank
as torchrun does (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT), through tests/ddp_worker.py;
one test uses torchrun itself."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import cli_env
from fastseq import distributed
from fastseq.cli import build_parser, main
from fastseq.models.train import train

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "ddp_worker.py"
TIMEOUT = 120  # seconds a launch may take before it counts as a hang

CHARLM = ["train", "charlm", "--data", "hello", "--hidden", "32", "--embed", "8", "--layers", "1",
          "--seq-len", "16", "--batch-size", "4", "--lr", "1e-2", "--no-progress", "--threads", "1"]
GPT = ["train", "gpt", "--data", "hello", "--context", "16", "--d-model", "16", "--heads", "2",
       "--layers", "2", "--batch-size", "4", "--lr", "3e-3", "--no-progress", "--threads", "1"]
CNN = ["train", "cnn", "--canvas-size", "24", "--channels", "4,4,4", "--self-attention", "--batch-size", "4",
       "--no-progress", "--threads", "1"]


# The CLI runs and small models gain nothing from threads, and one avoids OpenMP stalls on
# a shared machine (conftest.py's one_torch_thread).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(argv, n=2, env=None, program=(str(WORKER),)):
    """n processes of `program argv`, with the variables torchrun would set."""
    port, procs = free_port(), []
    for rank in range(n):
        rank_env = cli_env(WORLD_SIZE=str(n), RANK=str(rank), LOCAL_RANK=str(rank),
                           MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **(env or {}))
        procs.append(subprocess.Popen([sys.executable, *program, *argv], cwd=ROOT, env=rank_env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def finish(procs, timeout=TIMEOUT):
    """[(exit code, stdout, stderr)] per rank; a launch still running at `timeout` is killed
    and fails the test as a hang."""
    deadline, results = time.monotonic() + timeout, []
    for p in procs:
        try:
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
                q.communicate()
            pytest.fail(f"the launch did not end within {timeout} s (a hang)")
        results.append((p.returncode, out, err))
    return results


def launch(commands, n=2, env=None, timeout=TIMEOUT):
    """Runs the fastseq commands (lists of words) one after another in one n-process launch."""
    argv = [w for i, c in enumerate(commands) for w in ([] if i == 0 else ["::"]) + c]
    results = finish(start_ranks(argv, n, env), timeout)
    for rank, (code, out, err) in enumerate(results):
        assert code == 0, f"rank {rank} exited {code}:\n{out[-2000:]}\n{err[-3000:]}"
    return results


def one_process(argv):
    args = build_parser().parse_args(argv)
    return train(args.model, args)


def metrics(folder):
    return json.loads((Path(folder) / "metrics.json").read_text())


# ---- two processes against one ----

@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    """One 2-process launch: charlm, gpt and charlm on torch.nn for 10 steps; a charlm run of
    6 steps resumed to 10. Each rank saved its final parameters and loss history."""
    tmp = tmp_path_factory.mktemp("ddp")
    dump = tmp / "dump"
    dump.mkdir()
    commands = [
        CHARLM + ["--steps", "10", "--eval-every", "5", "--out", str(tmp / "charlm")],
        GPT + ["--steps", "10", "--eval-every", "5", "--out", str(tmp / "gpt")],
        CHARLM + ["--steps", "10", "--eval-every", "5", "--impl", "torch", "--out", str(tmp / "charlm-torch")],
        CHARLM + ["--steps", "6", "--eval-every", "3", "--out", str(tmp / "resumed")],
        CHARLM + ["--steps", "10", "--eval-every", "3", "--out", str(tmp / "resumed"), "--resume"],
    ]
    results = launch(commands, env={"FASTSEQ_TEST_DUMP": str(dump)})
    ranks = [[torch.load(dump / f"rank{r}-{i}.pt") for i in range(len(commands))] for r in range(2)]
    return tmp, ranks, results


@pytest.mark.parametrize("index", [0, 1, 2, 4], ids=["charlm", "gpt", "charlm-torch", "charlm-resumed"])
def test_both_ranks_end_with_identical_parameters(two_process_runs, index):
    _, ranks, _ = two_process_runs
    a, b = ranks[0][index]["params"], ranks[1][index]["params"]
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"parameters differ between the ranks: {different}"


@pytest.mark.parametrize("index,argv", [(0, CHARLM), (1, GPT), (2, CHARLM + ["--impl", "torch"])],
                         ids=["charlm", "gpt", "charlm-torch"])
def test_two_processes_learn_as_one_with_the_same_global_batch(two_process_runs, tmp_path, index, argv):
    folder, ranks, _ = two_process_runs
    name = ["charlm", "gpt", "charlm-torch"][index]
    one = one_process(argv + ["--steps", "10", "--eval-every", "5", "--out", str(tmp_path / "one")])
    two = ranks[0][index]["history"]
    steps_one, loss_one = zip(*one["history"]["train"])
    steps_two, loss_two = zip(*two["train"])
    assert steps_one == steps_two == tuple(range(1, 11))
    # Float tolerance only: the shards' GEMMs round differently from the whole batch's.
    assert loss_two == pytest.approx(loss_one, rel=1e-4, abs=1e-5)
    val_one = [m["val_loss"] for _, m in one["history"]["val"]]
    val_two = [m["val_loss"] for _, m in two["val"]]
    assert len(val_one) == 2 and val_two == pytest.approx(val_one, rel=1e-4, abs=1e-5)
    # The learning is not trivial: the loss fell, so matching histories mean matching updates.
    assert loss_one[-1] < loss_one[0] - 0.05
    # The run's own files say the same: the loss logged by rank 0 is the mean over both ranks.
    logged = [e["loss"] for e in metrics(folder / name)["history"]]
    assert logged == pytest.approx(loss_one, rel=1e-4, abs=1e-5)
    assert metrics(folder / name)["tokens"] == metrics(tmp_path / "one")["tokens"]  # summed over ranks


def test_one_run_folder_and_one_set_of_lines(two_process_runs):
    folder, _, results = two_process_runs
    data = metrics(folder / "charlm")
    assert data["world_size"] == 2 and data["steps"] == 10
    assert sorted(os.listdir(folder / "charlm")) == ["checkpoint.pt", "config.json", "loss.png",
                                                     "metrics.csv", "metrics.json"]
    assert len(list(folder.rglob("metrics.json"))) == 4  # one per run folder: rank 1 wrote none
    assert len(list(folder.rglob("checkpoint.pt"))) == 4
    (code0, out0, _), (code1, out1, err1) = results
    assert out0.count("charlm: 0.01M parameters") == 4 and "processes 2" in out0
    assert out1 == "" and "error" not in err1  # rank 1 printed nothing: no header, bar or summary


def test_a_resumed_distributed_run_continues_as_a_resumed_one_process_run(two_process_runs, tmp_path):
    folder, ranks, _ = two_process_runs
    resumed = ranks[0][4]["history"]["train"]  # 6 steps, then --resume to 10, on 2 processes
    out = ["--eval-every", "3", "--out", str(tmp_path / "one")]
    one_process(CHARLM + ["--steps", "6"] + out)
    one = one_process(CHARLM + ["--steps", "10", "--resume"] + out)["history"]["train"]
    assert [s for s, _ in resumed] == [s for s, _ in one] == list(range(1, 11))
    # The carried LSTM state of both ranks' streams was saved and given back to each.
    assert [v for _, v in resumed] == pytest.approx([v for _, v in one], rel=1e-4, abs=1e-5)
    assert metrics(folder / "resumed")["steps"] == 10
    # The checkpoint holds the whole batch's state: one process continues the 2-process run.
    state = torch.load(folder / "resumed" / "checkpoint.pt", weights_only=True)
    assert state["world_size"] == 2 and state["task"]["state"][0].shape[1] == 4
    result = one_process(CHARLM + ["--steps", "12", "--eval-every", "3", "--out", str(folder / "resumed"),
                                   "--resume"])
    assert [s for s, _ in result["history"]["train"]] == list(range(1, 13))
    assert metrics(folder / "resumed")["world_size"] == 1


# ---- failures and signals ----

def test_a_failure_on_one_rank_ends_both_with_an_error(tmp_path):
    start = time.monotonic()
    procs = start_ranks(CHARLM + ["--steps", "100000", "--eval-every", "100000", "--out", str(tmp_path / "run")],
                        env={"FASTSEQ_TEST_FAIL": "1:3"})
    (code0, _, err0), (code1, _, err1) = finish(procs, timeout=90)
    assert code1 != 0 and "injected failure on rank 1 at step 3" in err1
    assert code0 == 1, err0
    assert "rank 0: another process of this launch failed or ended" in err0
    assert "Traceback" not in err0  # one line, not a stack
    assert time.monotonic() - start < 90


def test_a_signal_to_one_rank_stops_both_at_the_same_step_and_the_run_resumes(tmp_path):
    out = tmp_path / "run"
    procs = start_ranks(CHARLM + ["--steps", "100000", "--eval-every", "100000", "--out", str(out)])
    csv = out / "metrics.csv"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not (csv.is_file() and len(csv.read_text().splitlines()) > 4):
        time.sleep(0.1)
    procs[1].send_signal(signal.SIGTERM)  # rank 1 only: rank 0 learns of it in the step's all-reduce
    (code0, _, err0), (code1, _, err1) = finish(procs, timeout=60)
    assert code0 == code1 == 130, (code0, code1, err0, err1)
    assert "interrupted by a signal to another rank" in err0 and "--resume" in err0
    assert err1.strip() == ""  # rank 0 alone says so
    step = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
    assert step >= 4
    result = one_process(CHARLM + ["--steps", str(step + 2), "--eval-every", "100000", "--out", str(out),
                                   "--resume"])
    assert result["history"]["train"][-1][0] == step + 2


# ---- the other trainers ----

def test_vision_and_a2c_train_on_two_processes(tmp_path):
    runs = {
        "cnn": CNN + ["--steps", "6", "--eval-every", "3"],
        "ram": ["train", "ram", "--canvas-size", "24", "--glimpses", "2", "--patch", "4", "--hidden", "16",
                "--batch-size", "4", "--steps", "3", "--eval-every", "3", "--no-progress"],
        "video": ["train", "video", "--size", "16", "--frames", "3", "--train-clips", "4", "--test-clips", "3",
                  "--channels", "4", "--batch-size", "4", "--steps", "2", "--eval-every", "2", "--no-progress"],
        "captioner": ["train", "captioner", "--image-size", "16", "--train-scenes", "16", "--val-scenes", "5",
                      "--channels", "4,8", "--hidden", "16", "--embed", "8", "--attn-dim", "8", "--batch-size", "4",
                      "--beam", "2", "--steps", "3", "--eval-every", "3", "--no-progress"],
        "seq2seq": ["train", "seq2seq", "--embed", "8", "--hidden", "16", "--attn-dim", "8", "--batch-size", "8",
                    "--steps", "4", "--eval-every", "2", "--no-progress"],
        "a2c": ["train", "a2c", "--steps", "512", "--eval-episodes", "2", "--set", "eval_every=256",
                "--set", "eval_episodes=2", "--set", "confirm_episodes=0", "--no-progress"],
    }
    launch([argv + ["--out", str(tmp_path / name)] for name, argv in runs.items()], timeout=180)
    for name in runs:
        data = metrics(tmp_path / name)
        assert data["world_size"] == 2 and data["final"], name
    assert (tmp_path / "ram" / "glimpses.png").is_file()
    assert metrics(tmp_path / "captioner")["final"].keys() >= {"bleu4", "unseen_exact_match", "beam2_bleu4"}
    # A2C: the episodes of both ranks' environments are in the one log.
    assert metrics(tmp_path / "a2c")["steps"] == 512
    # cnn draws each global batch on every rank: two processes learn as one.
    assert main(CNN + ["--steps", "6", "--eval-every", "3", "--out", str(tmp_path / "cnn-one")]) == 0
    assert metrics(tmp_path / "cnn-one")["final"] == pytest.approx(metrics(tmp_path / "cnn")["final"], abs=1e-6)
    loss_one = [e["loss"] for e in metrics(tmp_path / "cnn-one")["history"]]
    loss_two = [e["loss"] for e in metrics(tmp_path / "cnn")["history"]]
    assert loss_two == pytest.approx(loss_one, rel=1e-4, abs=1e-5)


def test_torchrun_itself_launches_one_run(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "-m", "fastseq", *GPT, "--steps", "4", "--eval-every", "2",
           "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("gpt: done in") == 1
    assert metrics(out)["world_size"] == 2


@pytest.mark.parametrize("algo", ["dqn", "reinforce"])
def test_dqn_and_reinforce_refuse_a_distributed_launch(algo, tmp_path, capsys, monkeypatch):
    from fastseq.rl.cli import ALGOS
    assert "refuses a torchrun launch" in ALGOS[algo][0]
    # A 2-process context without peers: the refusal comes before any collective.
    monkeypatch.setattr(distributed, "_current", distributed.Context(world_size=2, rank=1))
    assert main(["train", algo, "--steps", "100", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{algo} trains in one process" in err[0] and "WORLD_SIZE=2" in err[0]
    assert "[rank 1]" in err[0] and not (tmp_path / "run").exists()


# ---- the helpers ----

def test_batch_split_and_shards():
    ctx = distributed.Context(world_size=2, rank=1)
    assert ctx.local_batch(8) == 4 and ctx.shard(8) == slice(4, 8) and ctx.share(3.0) == 1.5
    with pytest.raises(ValueError, match=r"--batch-size: 5 is not divisible by the 2 processes"):
        ctx.local_batch(5)
    with pytest.raises(ValueError, match=r"--num-envs: 3"):
        ctx.local_batch(3, "--num-envs")
    # Uneven shards (validation sets) cover everything once, in rank order.
    three = [distributed.Context(world_size=3, rank=r).shard(7) for r in range(3)]
    assert [i for s in three for i in range(7)[s]] == list(range(7))
    assert distributed.Context(world_size=3, rank=0).shard(1) == slice(0, 0)


@pytest.mark.parametrize("environ,message", [
    ({"WORLD_SIZE": "2"}, "RANK, LOCAL_RANK not"),
    ({"WORLD_SIZE": "2", "RANK": "x", "LOCAL_RANK": "0"}, "RANK must be an integer, got 'x'"),
    ({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"}, "0 <= RANK < WORLD_SIZE"),
])
def test_launch_variables_are_checked(environ, message):
    with pytest.raises(ValueError, match=message):
        distributed.launch_env(environ)
    assert distributed.launch_env({}) is None
    assert distributed.launch_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == (4, 3, 1)


def test_one_gpu_named_under_a_launch_is_refused():
    with pytest.raises(ValueError, match=r"--device: 'cuda:1' names one GPU.*pass --device cuda"):
        distributed._device_for("cuda:1", 0)
    assert distributed._device_for("cpu", 3) == "cpu"
