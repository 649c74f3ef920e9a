"""The CLI as a product: one-line errors with exit 2, run folders that are never silently
overwritten, metrics.json from every trainer, --help with defaults, Ctrl-C/SIGTERM that
exit 130 and resume to the result of an uninterrupted run, and the pictures' fixes."""
import importlib.util
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastseq.cli import main
from conftest import cli_env
from fastseq.runs import Metrics, RunDir, RunExistsError, run_name

ROOT = Path(__file__).resolve().parents[1]
TINY_CHARLM = ["train", "charlm", "--data", "hello", "--hidden", "16", "--embed", "8", "--layers", "1",
               "--seq-len", "16", "--batch-size", "2", "--threads", "1", "--no-progress"]
TINY_GPT = ["train", "gpt", "--data", "hello", "--context", "16", "--d-model", "16", "--heads", "2",
            "--layers", "1", "--batch-size", "2", "--threads", "1", "--no-progress"]
TINY_SEQ2SEQ = ["train", "seq2seq", "--embed", "8", "--hidden", "16", "--attn-dim", "8", "--batch-size", "8",
                "--threads", "1", "--no-progress"]
TINY_RL = ["--set", "eval_episodes=2", "--set", "confirm_episodes=0", "--eval-episodes", "2", "--no-progress"]
TINY_DQN = ["train", "dqn", *TINY_RL, "--set", "learning_starts=200", "--set", "train_every=50",
            "--set", "gradient_steps=4", "--set", "eval_every=500", "--set", "buffer_size=2000",
            "--set", "hidden=32"]
TINY_REINFORCE = ["train", "reinforce", *TINY_RL, "--set", "eval_every=500", "--set", "hidden=16"]
TINY_A2C = ["train", "a2c", *TINY_RL, "--set", "eval_every=512", "--set", "hidden=16"]


# The CLI runs and small models gain nothing from threads, and one avoids OpenMP stalls on
# a shared machine (conftest.py's one_torch_thread).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_main(argv, capsys):
    """(exit code, stdout, stderr) of fastseq.cli.main, whether it returns or argparse exits."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def cli_process(argv, cwd=ROOT):
    env = cli_env()
    return subprocess.Popen([sys.executable, "-m", "fastseq", *argv], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def charlm_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "charlm"
    assert main([*TINY_CHARLM, "--steps", "20", "--eval-every", "10", "--out", str(out)]) == 0
    return out


# ---- item 4/5/7: bad input is exit 2 and one line, no traceback ----

BAD_INPUT = [
    (["train", "charlm", "--threads", "-1"], "argument --threads: expected an integer >= 0, got '-1'"),
    (["train", "dqn", "--threads", "-1"], "argument --threads"),
    (["sample", "--checkpoint", "CKPT", "--threads", "-1"], "argument --threads"),
    (["eval", "--checkpoint", "x.pt", "--threads", "-1"], "argument --threads"),
    (["train", "charlm", "--device", "mps"], "fastseq runs on cpu or cuda (cuda:N), not mps"),
    (["train", "gpt", "--device", "meta"], "not meta"),
    (["train", "a2c", "--device", "mps"], "not mps"),
    (["train", "charlm", "--device", "nonsense"], "expected cpu, cuda or cuda:N"),
    (["train", "charlm", "--steps", "0"], "argument --steps: expected an integer >= 1, got '0'"),
    (["train", "charlm", "--lr", "-1"], "argument --lr: expected a number > 0"),
    (["train", "charlm", "--val-fraction", "1"], "argument --val-fraction"),
    (["train", "dqn", "--steps", "0"], "argument --steps: expected an integer >= 1"),
    (["train", "dqn", "--set", "total_steps=0"], "--steps: expected an integer >= 1, got 0"),
    (["train", "dqn", "--set", "tau=2"], "--set tau: expected a number in (0, 1], got 2.0"),
    (["cells", "--checkpoint", "CKPT", "--data", "hello", "--chars", "-10"], "argument --chars"),
    (["cells", "--checkpoint", "CKPT", "--data", "hello", "--chars", "0"], "argument --chars"),
    (["cells", "--checkpoint", "CKPT", "--data", "hello", "--top", "0"], "argument --top"),
    (["cells", "--checkpoint", "CKPT", "--data", "hello", "--offset", "999999"], "--offset: 999999 is past"),
    (["train", "charlm", "--data", sys.executable], "is a binary file, not text"),
    (["train", "seq2seq", "--data", "/no/such.tsv"], "seq2seq takes 'dates' or a file"),
    (["sample", "--checkpoint", "TRUNCATED"], "is truncated or corrupt"),
    (["sample", "--checkpoint", "FOLDER"], "is a folder, expected a fastseq model checkpoint file; did you mean"),
    (["eval", "--checkpoint", "TRUNCATED"], "is truncated or corrupt"),
    (["train", "charlm", "--data", "hello", "--resume", "--out", "MISSING"], "--resume: no run folder"),
]


@pytest.mark.parametrize("argv, message", BAD_INPUT)
def test_bad_input_is_one_line_and_exit_2(argv, message, charlm_run, tmp_path, capsys):
    with open(charlm_run / "checkpoint.pt", "rb") as f:
        (tmp_path / "cut.pt").write_bytes(f.read(300))
    names = {"CKPT": str(charlm_run / "checkpoint.pt"), "TRUNCATED": str(tmp_path / "cut.pt"),
             "FOLDER": str(charlm_run), "MISSING": str(tmp_path / "missing")}
    argv = [names.get(a, a) for a in argv]
    if argv[0] == "train" and "--out" not in argv:
        argv += ["--out", str(tmp_path / "run"), "--no-progress"]
    code, _, err = run_main(argv, capsys)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_help_shows_defaults_and_the_set_keys(capsys):
    code, out, _ = run_main(["train", "charlm", "--help"], capsys)
    assert code == 0 and "(default: 2000)" in out and "(default: shakespeare)" in out
    code, out, _ = run_main(["train", "dqn", "--help"], capsys)
    assert code == 0 and "total_steps (100000)" in out and "gamma (0.99)" in out and "--device" in out
    code, out, _ = run_main(["train", "reinforce", "--help"], capsys)
    assert code == 0 and "--network" not in out and "--resume" in out
    code, out, _ = run_main(["--version"], capsys)
    assert code == 0 and out.startswith("fastseq ")


# ---- item 2: run folders ----

def test_run_names_tell_runs_apart():
    assert run_name("charlm", "shakespeare", "fastseq", "seed0") == "charlm-shakespeare-fastseq-seed0"
    assert run_name("charlm", "/data/my plays.txt", "torch", "seed1") == "charlm-my_plays-torch-seed1"
    assert run_name("dqn", "CartPole-v1", None, "hidevel", "seed0") == "dqn-CartPole-v1-hidevel-seed0"


def test_default_folders_differ_by_impl_and_network(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for impl in ("fastseq", "torch"):
        assert main([*TINY_CHARLM, "--steps", "4", "--eval-every", "4", "--impl", impl]) == 0
    assert (tmp_path / "runs/charlm-hello-fastseq-seed0/checkpoint.pt").is_file()
    assert (tmp_path / "runs/charlm-hello-torch-seed0/checkpoint.pt").is_file()
    for network in ("mlp", "lstm"):
        assert main([*TINY_DQN, "--steps", "300", "--network", network, "--history", "2"]) == 0
    assert {p.name for p in (tmp_path / "runs").glob("dqn-*")} == {
        "dqn-CartPole-v1-mlp-history2-seed0", "dqn-CartPole-v1-lstm-history2-seed0"}


@pytest.mark.parametrize("argv", [TINY_CHARLM + ["--steps", "4", "--eval-every", "4"],
                                  TINY_REINFORCE + ["--steps", "600"]], ids=["charlm", "reinforce"])
def test_second_run_does_not_destroy_the_first(argv, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*argv, "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    code, _, err = run_main([*argv, "--out", str(out), "--seed", "1"], capsys)
    assert code == 2 and "--resume" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert main([*argv, "--out", str(out), "--seed", "1", "--overwrite"]) == 0
    assert (out / "metrics.json").read_bytes() != before["metrics.json"]


def test_a_failed_start_leaves_a_folder_the_next_run_may_use(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_main([*TINY_DQN, "--env", "NoSuchEnv-v0", "--out", str(out)], capsys)[0] == 2
    assert run_main([*TINY_CHARLM, "--data", "/no/such.txt", "--out", str(out)], capsys)[0] == 2
    assert main([*TINY_REINFORCE, "--steps", "600", "--out", str(out)]) == 0


def test_overwrite_refuses_a_folder_fastseq_did_not_write(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunExistsError):
        RunDir(tmp_path)
    with pytest.raises(ValueError, match="not a fastseq run folder"):
        RunDir(tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_metrics_resume_rewinds_to_the_checkpoint(tmp_path):
    run = RunDir(tmp_path / "r")
    metrics = Metrics(run, "m")
    for step in range(1, 6):
        metrics.log(step, loss=1.0 / step, **({"val_loss": 2.0} if step == 3 else {}))
    resumed = Metrics(RunDir(run.path, resume=True), "m", resume=True)
    resumed.rewind(3)
    assert [e["step"] for e in resumed.history] == [1, 2, 3] and resumed.history[2]["val_loss"] == 2.0
    data = json.loads(resumed.finish({"val_loss": 2.0}, 3).read_text())
    assert data["model"] == "m" and data["world_size"] == 1 and data["final"] == {"val_loss": 2.0}


# ---- item 6: metrics.json from every trainer ----

@pytest.mark.parametrize("argv, final_key", [
    (TINY_CHARLM + ["--steps", "6", "--eval-every", "3"], "val_bpc"),
    (TINY_GPT + ["--steps", "6", "--eval-every", "3"], "val_loss"),
    (TINY_SEQ2SEQ + ["--steps", "6", "--eval-every", "3"], "exact_match"),
    (TINY_DQN + ["--steps", "600"], "mean_return"),
    (TINY_REINFORCE + ["--steps", "600"], "mean_return"),
    (TINY_A2C + ["--steps", "600"], "mean_return"),
], ids=["charlm", "gpt", "seq2seq", "dqn", "reinforce", "a2c"])
def test_every_trainer_writes_config_and_metrics(argv, final_key, tmp_path, capsys):
    out = tmp_path / "run"
    tensorboard = importlib.util.find_spec("tensorboard") is not None
    assert main([*argv, "--out", str(out)] + (["--tensorboard"] if tensorboard else [])) == 0
    stdout = capsys.readouterr().out
    data = json.loads((out / "metrics.json").read_text())
    assert data["model"] == argv[1] and data["world_size"] == 1 and data["steps"] >= 6
    assert data["history"] and all("step" in e for e in data["history"])
    assert any("loss" in e for e in data["history"]) and final_key in data["final"]
    assert (out / "metrics.csv").read_text().startswith("step,")
    assert json.loads((out / "config.json").read_text())
    assert not tensorboard or list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert f"{argv[1]}: " in stdout.splitlines()[0] and "parameters" in stdout.splitlines()[0]
    assert "done in" in stdout.splitlines()[-1] and "metrics.json" in stdout.splitlines()[-1]


def test_progress_lines_without_a_tty_and_solved_is_announced(tmp_path):
    from fastseq.progress import Progress

    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        bar = Progress(10, desc="x", every=0.0, stream=f)
        for step in range(1, 11):
            bar.update(step, loss=0.5)
        bar.close()
    lines = log.read_text().splitlines()
    assert len(lines) == 10 and lines[-1].startswith("x: step 10/10 (100%)  loss 0.5")


# ---- item 3: interrupts ----

def interrupt_when(proc, path, sig, timeout=120):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(sig)
    return proc.communicate(timeout=timeout)


@pytest.mark.parametrize("argv, first_checkpoint, sig", [
    (TINY_CHARLM + ["--steps", "1500", "--eval-every", "100"], "checkpoint.pt", signal.SIGINT),
    (TINY_DQN + ["--steps", "6000"], "best.pt", signal.SIGTERM),
    (TINY_A2C + ["--steps", "8000"], "best.pt", signal.SIGINT),
], ids=["charlm-sigint", "dqn-sigterm", "a2c-sigint"])
def test_interrupt_exits_130_and_resumes_to_the_same_result(argv, first_checkpoint, sig, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    reference = cli_process([*argv, "--out", str(whole)])
    proc = cli_process([*argv, "--out", str(split)])
    _, err = interrupt_when(proc, split / first_checkpoint, sig)
    assert proc.returncode == 130, err
    assert len(err.strip().splitlines()) == 1 and "interrupted by" in err and "--resume" in err
    assert "Traceback" not in err
    assert not (split / "metrics.json").exists()  # it did stop before the end
    resumed = cli_process([*argv, "--out", str(split), "--resume"])
    for p in (reference, resumed):
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (whole, split))
    assert a["steps"] == b["steps"] and a["final"] == b["final"] and a["history"] == b["history"]


# ---- item 8: pictures ----

def test_gpt_attention_caps_a_long_prompt(tmp_path, capsys):
    out = tmp_path / "gpt"
    assert main([*TINY_GPT, "--steps", "2", "--eval-every", "2", "--context", "128", "--out", str(out)]) == 0
    png = tmp_path / "att.png"
    code, _, err = run_main(["attention", "--checkpoint", str(out / "checkpoint.pt"), "--prompt",
                             "hello fastseq!\n" * 20, "--out", str(png)], capsys)
    assert code == 0 and "drawing the last 64" in err
    from matplotlib.image import imread
    height, width = imread(png).shape[:2]
    assert max(height, width) < 2500


def test_seq2seq_loss_plot_draws_exact_match_on_a_log_axis(tmp_path):
    from fastseq.models.viz import plot_loss

    history = {"train": [[1, 3.0], [2, 0.5], [3, 0.01]], "val": [[2, {"val_loss": 0.4, "exact_match": 0.5}],
                                                                   [3, {"val_loss": 0.02, "exact_match": 1.0}]]}
    figure = plot_loss(history, str(tmp_path / "loss.png"))
    axes = figure.axes
    assert axes[0].get_yscale() == "log" and any(ax.get_ylabel() == "exact match" for ax in axes)
