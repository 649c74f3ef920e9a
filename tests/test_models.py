"""The classic models end to end on CPU: each learns its small task, sampling is
reproducible, checkpoints round-trip and resume, the corpora load and the pictures
are written. Budgets are small (seconds each) with one torch thread."""
import math
import os
from collections import Counter

import pytest
import torch

from fastseq.cli import build_parser, main
from fastseq.models import CharLM, GPT, Seq2Seq, checkpoint
from fastseq.models.cells import rank_units, text_features
from fastseq.models.corpora import HELLO_LINE, HELLO_TEXT, load_corpus, markdown_play_to_text
from fastseq.models.dates import date_pairs, ordinal_words, year_words
from fastseq.models.sampling import generate_text, translate
from fastseq.models.train import train
from fastseq.models.vocab import CharVocab


# The CLI runs and small models gain nothing from threads, and one avoids OpenMP stalls on
# a shared machine (conftest.py's one_torch_thread).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def train_cli(out, *argv):
    args = build_parser().parse_args(["train", *argv, "--out", str(out), "--no-progress", "--threads", "1"])
    return train(args.model, args)


HELLO_CHARLM = ("charlm", "--data", "hello", "--hidden", "64", "--embed", "16", "--layers", "1",
                "--seq-len", "32", "--batch-size", "4", "--lr", "1e-2", "--eval-every", "50")


@pytest.fixture(scope="module")
def hello_charlm(tmp_path_factory):
    out = tmp_path_factory.mktemp("hello_charlm")
    return train_cli(out, *HELLO_CHARLM, "--steps", "150")


@pytest.fixture(scope="module")
def dates_seq2seq(tmp_path_factory):
    out = tmp_path_factory.mktemp("dates")
    return train_cli(out, "seq2seq", "--steps", "300", "--eval-every", "150")


@pytest.fixture(scope="module")
def hello_gpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("hello_gpt")
    return train_cli(out, "gpt", "--data", "hello", "--steps", "200", "--context", "32",
                     "--d-model", "32", "--heads", "2", "--layers", "2", "--batch-size", "8",
                     "--lr", "3e-3", "--eval-every", "100")


# ---- learning ----

def test_charlm_learns_hello_exactly(hello_charlm):
    model, vocab = hello_charlm["model"], hello_charlm["vocab"]
    expected = HELLO_LINE * 3
    greedy = generate_text(model, vocab, expected[0], len(expected) - 1, temperature=0)
    assert greedy == expected
    assert hello_charlm["metrics"]["val_bpc"] < 0.1


def test_seq2seq_reaches_95_percent_exact_match(dates_seq2seq):
    assert dates_seq2seq["metrics"]["exact_match"] >= 0.95
    model, vocabs = dates_seq2seq["model"], dates_seq2seq["vocab"]
    for source, iso in date_pairs(5, seed=123):
        greedy, attention, words = translate(model, vocabs, source)
        beam, beam_attention, _ = translate(model, vocabs, source, beam=3)
        assert beam == iso
        assert attention.shape == (len(greedy), len(words))
        assert torch.allclose(attention.sum(-1), torch.ones(len(greedy)), atol=1e-5)
        assert beam_attention.shape == (len(beam), len(words))


def test_gpt_loss_falls_well_below_unigram_entropy(hello_gpt):
    counts = Counter(HELLO_TEXT)
    total = sum(counts.values())
    unigram_nats = -sum(c / total * math.log(c / total) for c in counts.values())
    assert hello_gpt["metrics"]["val_loss"] < 0.25 * unigram_nats


def test_gpt_is_causal_for_both_position_kinds():
    for positions in ("learned", "sinusoidal"):
        model = GPT(11, context=16, d_model=16, heads=2, layers=2, positions=positions).eval()
        x = torch.randint(11, (2, 13))
        y = x.clone()
        y[:, 9:] = (y[:, 9:] + 1) % 11
        with torch.no_grad():
            a, weights = model(x, return_weights=True)
            b = model(y)
        torch.testing.assert_close(a[:, :9], b[:, :9])
        assert not torch.allclose(a[:, 9:], b[:, 9:])
        # The explicit-weights path (for pictures) agrees with the fused attention path.
        torch.testing.assert_close(a, model(x), rtol=1e-4, atol=1e-5)
        assert weights[0].shape == (2, 2, 13, 13) and weights[0][0, 0].triu(1).abs().max() == 0


def test_impl_switch_gives_identical_models():
    # Same seed -> same weights and outputs with fastseq's layers and torch's.
    inputs = torch.randint(20, (7, 3))
    out = {}
    for impl in ("fastseq", "torch"):
        torch.manual_seed(1)
        model = CharLM(20, embed=8, hidden=16, layers=2, impl=impl)
        out[impl] = (model.state_dict(), model(inputs)[0])
    assert out["fastseq"][0].keys() == out["torch"][0].keys()
    for key in out["torch"][0]:
        torch.testing.assert_close(out["fastseq"][0][key], out["torch"][0][key])
    torch.testing.assert_close(out["fastseq"][1], out["torch"][1])


# ---- sampling and checkpoints ----

def test_sampling_is_reproducible_with_a_seed(hello_charlm):
    model = CharLM(len(hello_charlm["vocab"]), embed=8, hidden=16, layers=1)  # untrained: varied output
    vocab = hello_charlm["vocab"]
    first = generate_text(model, vocab, "h", 60, temperature=1.0, top_k=5, seed=7)
    again = generate_text(model, vocab, "h", 60, temperature=1.0, top_k=5, seed=7)
    other = generate_text(model, vocab, "h", 60, temperature=1.0, top_k=5, seed=8)
    assert first == again and first != other and len(first) == 61


def test_top_k_one_is_greedy(hello_gpt):
    model, vocab = hello_gpt["model"], hello_gpt["vocab"]
    assert (generate_text(model, vocab, "hel", 20, temperature=1.0, top_k=1, seed=3)
            == generate_text(model, vocab, "hel", 20, temperature=0))


def test_checkpoint_round_trips(hello_charlm, hello_gpt, dates_seq2seq):
    for run in (hello_charlm, hello_gpt, dates_seq2seq):
        state = checkpoint.load(run["checkpoint"])
        for impl in ("fastseq", "torch"):
            model = checkpoint.build_model(state, impl=impl)
            assert type(model) is type(run["model"]) and model.config["impl"] == impl
            for key, value in run["model"].state_dict().items():
                assert torch.equal(model.state_dict()[key], value)
    state = checkpoint.load(hello_charlm["checkpoint"])
    assert checkpoint.vocab_from_dict(state["vocab"]).chars == hello_charlm["vocab"].chars
    assert state["step"] == 150 and len(state["history"]["train"]) == 150


def test_training_resumes_from_checkpoint(tmp_path):
    train_cli(tmp_path, *HELLO_CHARLM, "--steps", "20")
    resumed = train_cli(tmp_path, *HELLO_CHARLM, "--steps", "30", "--resume")
    assert [s for s, _ in resumed["history"]["train"]] == list(range(1, 31))
    state = checkpoint.load(resumed["checkpoint"], expect_kind="charlm")
    assert state["step"] == 30 and state["scheduler"]["last_epoch"] == 30
    assert os.path.getsize(tmp_path / "loss.png") > 1000


# ---- corpora ----

def test_markdown_play_conversion():
    play = ("# A Play\n\n## ACT I\n\n### SCENE I. A heath.\n\n_Enter two WITCHES,\nslowly_\n\n"
            "**FIRST WITCH**  \nWhen shall we three meet again  \n__\\[Aside]_  \nIn thunder?\n\n"
            "_Exeunt_\n\n**SECOND WITCH**  \nWhen the hurlyburly's done.\n")
    assert markdown_play_to_text(play) == ("FIRST WITCH:\nWhen shall we three meet again\nIn thunder?\n\n"
                                           "SECOND WITCH:\nWhen the hurlyburly's done.\n")


def test_builtin_corpora_load():
    shakespeare = load_corpus("shakespeare")
    assert len(shakespeare) > 4_000_000
    assert "HAMLET:\n" in shakespeare and "To be, or not to be" in shakespeare
    assert not set("*_#[]\\") & set(shakespeare)
    stdlib = load_corpus("stdlib")
    assert len(stdlib) > 1_000_000 and "def " in stdlib and "import " in stdlib
    assert load_corpus("hello") == HELLO_TEXT


def test_folder_corpus(tmp_path):
    (tmp_path / "a.txt").write_text("first file\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.py").write_text("x = 1\n")
    (tmp_path / "skip.bin").write_bytes(b"\x00\x01")
    assert load_corpus(str(tmp_path)) == "first file\n\nx = 1\n"


def test_date_words():
    assert [ordinal_words(d) for d in (1, 12, 20, 23, 30, 31)] == [
        "first", "twelfth", "twentieth", "twenty third", "thirtieth", "thirty first"]
    import random
    rng = random.Random(0)
    assert year_words(1999, rng) == "nineteen ninety nine"
    assert year_words(1905, rng) == "nineteen oh five"
    assert year_words(1900, rng) == "nineteen hundred"
    assert year_words(2007, rng) == "two thousand and seven"


# ---- pictures ----

def test_cell_features_and_ranking():
    text = 'x = "ab" # c\ny = f(a[1])\n'
    features = text_features(text)
    assert features["inside quotes"][4:8] == [1.0, 1.0, 1.0, 0.0]
    assert features["inside a comment"][9:13] == [1.0, 1.0, 1.0, 0.0]
    assert features["bracket depth"][18:23] == [1.0, 1.0, 2.0, 2.0, 1.0]
    # A planted unit that equals a feature must rank first for it.
    activations = torch.randn(len(text), 8) * 0.1
    activations[:, 5] = torch.tensor(features["inside a comment"]) * 2 - 1
    ranking = rank_units(activations, text, top=2)
    assert ranking["inside a comment"][0][0] == 5 and ranking["inside a comment"][0][1] > 0.99


def test_cells_and_attention_commands_write_files(hello_charlm, hello_gpt, dates_seq2seq, tmp_path, capsys):
    html = tmp_path / "cells.html"
    assert main(["cells", "--checkpoint", hello_charlm["checkpoint"], "--data", "hello",
                 "--chars", "200", "--out", str(html), "--png", str(tmp_path / "cells.png")]) == 0
    page = html.read_text()
    assert (tmp_path / "cells.png").read_bytes()[:4] == b"\x89PNG"
    assert page.count("<span style=\"background:rgb(") >= 200 and "position in line" in page
    for run in (dates_seq2seq, hello_gpt):
        png = tmp_path / f"{run['model'].kind}.png"
        assert main(["attention", "--checkpoint", run["checkpoint"], "--out", str(png)]
                    + (["--prompt", "hello fastseq"] if run is hello_gpt else [])) == 0
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["sample", "--checkpoint", dates_seq2seq["checkpoint"], "--beam", "2",
                 "--prompt", "the first of may two thousand"]) == 0
    assert "2000-05-01" in capsys.readouterr().out


# ---- bad input ----

@pytest.mark.parametrize("argv, message", [
    (["train", "charlm", "--data", "/no/such/file.txt"], "no such file or folder: '/no/such/file.txt'"),
    (["train", "gpt", "--data", "EMPTY"], "is empty"),
    (["train", "charlm", "--data", "hello", "--seq-len", "600"], "corpus too small"),
    (["train", "seq2seq", "--data", "EMPTY"], "is empty"),
    (["sample", "--checkpoint", "/no/such.pt"], "no such file"),
    (["sample", "--checkpoint", "NOT_A_CHECKPOINT"], "is not a fastseq model checkpoint"),
    (["cells", "--checkpoint", "SEQ2SEQ", "--data", "hello"], "holds a seq2seq model, expected charlm"),
    (["attention", "--checkpoint", "CHARLM"], "holds a charlm model, expected seq2seq or gpt"),
    (["sample", "--checkpoint", "CHARLM", "--prompt", "xyz"], "characters 'xyz' are not in the model's vocabulary"),
    (["sample", "--checkpoint", "SEQ2SEQ", "--prompt", "the 5th of may"], "'5th' not in the model's vocabulary"),
    (["train", "charlm", "--data", "hello", "--resume", "--out", "SEQ2SEQ_RUN"],
     "holds a seq2seq model, expected charlm"),
])
def test_bad_cli_input_gives_clear_errors(argv, message, tmp_path, capsys, hello_charlm, dates_seq2seq):
    (tmp_path / "empty.txt").write_text("\n \n")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    names = {"EMPTY": str(tmp_path / "empty.txt"), "NOT_A_CHECKPOINT": str(tmp_path / "junk.pt"),
             "CHARLM": hello_charlm["checkpoint"], "SEQ2SEQ": dates_seq2seq["checkpoint"],
             "SEQ2SEQ_RUN": os.path.dirname(dates_seq2seq["checkpoint"])}
    argv = [names.get(a, a) for a in argv]
    if argv[0] == "train" and "--out" not in argv:
        argv += ["--out", str(tmp_path / "run"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_cuda_without_gpu_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "charlm", "--data", "hello", "--device", "cuda", "--no-progress"])
    assert exit_info.value.code == 2
    assert "argument --device: 'cuda': torch sees no CUDA device here" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--batch-size", "--seq-len", "--hidden", "--eval-every"])
def test_non_positive_sizes_are_rejected_by_the_parser(flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "charlm", "--data", "hello", flag, "0"])
    assert exit_info.value.code == 2
    assert f"argument {flag}: expected an integer >= 1, got '0'" in capsys.readouterr().err
