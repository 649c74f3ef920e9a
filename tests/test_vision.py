"""The vision models: SelfAttention2d against a plain-torch reference, the data
generators, caption metrics, every model overfitting a tiny set, reproducible decoding and
sampling, checkpoints round-tripping, and the CLI (metrics.json, clear errors). Tiny sizes,
one torch thread."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

import fastseq.nn as fnn
from fastseq.cli import main
from fastseq.models import checkpoint
from fastseq.models.vision.caption_metrics import corpus_bleu, exact_match, grounding_hits
from fastseq.models.vision.captioner import Captioner
from fastseq.models.vision.classifiers import CNNClassifier, FCClassifier
from fastseq.models.vision.data_digits import DigitCanvases
from fastseq.models.vision.data_shapes import UNSEEN, WORDS, ShapeScenes, object_of_word
from fastseq.models.vision.data_video import MovingDigits
from fastseq.models.vision.encoder import TorchSelfAttention2d
from fastseq.models.vision.ram import RAM, glimpse_sensor
from fastseq.models.vision.train_captioner import MAX_WORDS, caption_text, encode_captions
from fastseq.models.vision.video import VideoLabeler
from fastseq.models.vocab import TokenVocab


# The CLI runs and small models gain nothing from threads, and one avoids OpenMP stalls on
# a shared machine (conftest.py's one_torch_thread).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- SelfAttention2d ----

def reference_self_attention(layer, x):
    """SAGAN self-attention written out in plain torch ops."""
    b, c, h, w = x.shape
    heads = layer.heads

    def split(t):
        return t.reshape(b, heads, -1, h * w).transpose(-1, -2)

    q, k, v = (split(F.conv2d(x, conv.weight, conv.bias)) for conv in (layer.query, layer.key, layer.value))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1)
    out = (weights @ v).transpose(-1, -2).reshape(b, c, h, w)
    return x + layer.gamma * out, weights


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("heads,key_channels", [(1, None), (2, 4)])
@pytest.mark.parametrize("cls", [fnn.SelfAttention2d, TorchSelfAttention2d])
def test_self_attention_2d_matches_reference(dtype, tol, heads, key_channels, cls):
    layer = cls(16, key_channels=key_channels, heads=heads).to(dtype)
    with torch.no_grad():
        layer.gamma.fill_(0.7)  # at zero no gradient would reach the convolutions
    x = torch.randn(2, 16, 5, 6, dtype=dtype, requires_grad=True)
    out, weights = layer(x, return_weights=True)
    ref, ref_weights = reference_self_attention(layer, x)
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    torch.testing.assert_close(weights, ref_weights, atol=tol, rtol=tol)
    torch.testing.assert_close(layer(x), ref, atol=tol, rtol=tol)
    grad = torch.randn_like(out)
    params = [x, *layer.parameters()]
    got = torch.autograd.grad(layer(x), params, grad)
    expected = torch.autograd.grad(ref, params, grad)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=tol * 10, rtol=tol * 10)


def test_self_attention_2d_starts_as_identity():
    layer = fnn.SelfAttention2d(8)
    x = torch.randn(1, 8, 4, 4)
    assert torch.equal(layer(x), x)
    assert layer.key_channels == 1


def test_self_attention_2d_bad_input():
    with pytest.raises(ValueError, match=r"expected input \(B, 8, H, W\), got \(1, 4, 3, 3\)"):
        fnn.SelfAttention2d(8)(torch.randn(1, 4, 3, 3))
    with pytest.raises(ValueError, match="heads=3 must divide"):
        fnn.SelfAttention2d(8, key_channels=4, heads=3)


# ---- data ----

def test_shape_scenes_are_reproducible_and_split():
    a, b = ShapeScenes(40, seed=3), ShapeScenes(40, seed=3)
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    for caption, masks in zip(a.captions, a.masks):
        pairs = [(caption[i + 1], caption[i + 2]) for i, w in enumerate(caption) if w == "a"]
        assert len(pairs) == len(masks) and not set(pairs) & set(UNSEEN)
        assert all(m.any() for m in masks)
        # masks are left to right, like the caption
        centres = [m.nonzero()[1].mean() for m in masks]
        assert centres == sorted(centres)
    unseen = ShapeScenes(40, split="unseen")
    assert all((c[i + 1], c[i + 2]) in UNSEEN for c in unseen.captions for i, w in enumerate(c) if w == "a")


def test_digit_canvases():
    digits = DigitCanvases("cluttered", canvas=40, clutter=3, limit=8)
    x, y = digits.batch(5)
    assert x.shape == (5, 1, 40, 40) and y.shape == (5,) and 0 <= x.min() and x.max() <= 1
    assert digits.test_x.shape == (8, 1, 40, 40)
    with pytest.raises(ValueError, match="--canvas: expected one of"):
        DigitCanvases("noisy")


def test_moving_digits_labels_per_frame():
    clips = MovingDigits(n_train=20, n_test=4, frames=6, size=24)
    assert clips.train_x.shape == (20, 6, 1, 24, 24) and clips.train_y.shape == (20, 6)
    # a label changes at most once (one cut per clip)
    changes = (clips.train_y[:, 1:] != clips.train_y[:, :-1]).sum(1)
    assert changes.max() <= 1


# ---- metrics ----

def test_corpus_bleu():
    words = "a b c d e".split()
    assert corpus_bleu([words], [[words]]) == pytest.approx(1.0)
    # precisions 4/5, 3/4, 2/3, 1/2, equal lengths (no brevity penalty)
    assert corpus_bleu([words], [["a b c d f".split()]]) == pytest.approx(0.2 ** 0.25)
    # a short hypothesis pays the brevity penalty exp(1 - 6/5)
    six = "a b c d e f".split()
    assert corpus_bleu([words], [[six]]) == pytest.approx(math.exp(1 - 6 / 5))
    assert corpus_bleu([["x"]], [[words]]) == 0.0
    assert exact_match([["a"], ["b"]], [["a"], ["c"]]) == 0.5


def test_grounding_hits():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool).numpy()
    masks[0, 0:2, 0:2] = True  # object 0 in the top-left cell of a 2x2 grid (cells of 4x4)
    masks[1, 5:7, 5:7] = True  # object 1 bottom-right
    attention = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1.0], [0, 1.0, 0, 0]])
    # words: "a", colour 0, shape 0 ... then object 1's colour word looks at the wrong cell
    assert grounding_hits(attention, masks, [-1, 0, 1, 1], grid=2) == (2, 3)
    assert object_of_word([1, 2]) == [-1, 0, 0, -1, -1, -1, 1, 1]


# ---- models overfit tiny sets ----

def fit(model, loss_fn, steps, lr=1e-2):
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = loss_fn()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


@pytest.fixture(scope="module")
def tiny_captioner():
    torch.manual_seed(0)
    scenes = ShapeScenes(8, size=16, seed=1)
    vocab = TokenVocab(WORDS)
    model = Captioner(len(vocab), "soft", image_size=16, channels=(8, 16), kernels=(3, 1), coords=True,
                      feed="where", embed=16, hidden=32, attn_dim=16)
    tgt_in, tgt = encode_captions(vocab, scenes.captions, "cpu")

    def loss():
        logits, _ = model(scenes.images, tgt_in)
        return F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=0)

    fit(model, loss, 150)
    return model.eval(), vocab, scenes


def test_captioner_overfits(tiny_captioner):
    model, vocab, scenes = tiny_captioner
    tokens, attention = model.decode(scenes.images, MAX_WORDS)
    assert [caption_text(vocab, row) for row in tokens.tolist()] == scenes.captions
    assert attention.shape[:2] == tokens.shape and attention.shape[2] == model.grid ** 2
    torch.testing.assert_close(attention.sum(-1)[tokens != 0], torch.ones((tokens != 0).sum().item()))
    words, beam_attention, logp = model.beam_search(scenes.images[:1], 3, MAX_WORDS)
    assert caption_text(vocab, words) == scenes.captions[0] and logp <= 0
    assert beam_attention.shape == (len(words), model.grid ** 2)


def test_captioner_sampling_is_reproducible(tiny_captioner):
    model, _, scenes = tiny_captioner
    draws = [model.decode(scenes.images, MAX_WORDS, temperature=3.0,
                          generator=torch.Generator().manual_seed(s))[0] for s in (5, 5, 6)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])


def test_captioner_bad_settings():
    with pytest.raises(ValueError, match="'where' needs --attention soft and --coords"):
        Captioner(20, "soft", feed="where")
    with pytest.raises(ValueError, match="--kernels: expected 3 odd sizes"):
        Captioner(20, "soft", kernels=(3, 2, 1))


def test_captioner_without_attention_overfits():
    torch.manual_seed(0)
    scenes = ShapeScenes(6, size=16, seed=2)
    vocab = TokenVocab(WORDS)
    model = Captioner(len(vocab), "none", image_size=16, channels=(8, 16), embed=16, hidden=32)
    tgt_in, tgt = encode_captions(vocab, scenes.captions, "cpu")
    loss = fit(model, lambda: F.cross_entropy(model(scenes.images, tgt_in)[0].flatten(0, 1),
                                              tgt.flatten(), ignore_index=0), 150)
    assert loss < 0.05
    assert model.eval().decode(scenes.images, MAX_WORDS)[1] is None


def tiny_digits(n=16, canvas=24):
    digits = DigitCanvases("translated", canvas=canvas, limit=n)
    return digits.test_x, digits.test_y


# Factories, not instances: a model built at collection time would take its initial weights
# from whatever the random state is then (it changes with the test files collected before).
@pytest.mark.parametrize("make_model", [
    lambda: CNNClassifier(24, (8, 16, 16)), lambda: CNNClassifier(24, (8, 16, 16), self_attention=True),
    lambda: CNNClassifier(24, (8, 16, 16), self_attention=True, impl="torch"), lambda: FCClassifier(24, 64)],
    ids=["cnn", "cnn-selfattn", "cnn-selfattn-torch", "fc"])
def test_classifiers_overfit(make_model):
    torch.manual_seed(0)
    model = make_model()
    x, y = tiny_digits()
    fit(model, lambda: F.cross_entropy(model(x), y), 120, lr=5e-3)
    assert (model(x).argmax(-1) == y).all()


def test_ram_overfits_and_samples_reproducibly():
    torch.manual_seed(0)
    x, y = tiny_digits()
    model = RAM(glimpses=3, patch=6, scales=3, glimpse_hidden=32, location_hidden=16, hidden=64)

    def loss():
        logits, logp, baseline, _ = model(x)
        reward = (logits.argmax(-1) == y).float()[:, None]
        return (F.cross_entropy(logits, y) - (logp * (reward - baseline).detach()).sum(1).mean()
                + F.mse_loss(baseline, reward.expand_as(baseline)))

    fit(model, loss, 150, lr=5e-3)
    logits, logp, baseline, locs = model(x, sample=False)
    assert (logits.argmax(-1) == y).all()
    assert logp.shape == baseline.shape == (16, 2) and locs.shape == (16, 3, 2)
    assert locs.abs().max() <= 1 and torch.equal(locs[:, 0], torch.zeros(16, 2))
    a, b, c = (model(x, generator=torch.Generator().manual_seed(s))[3] for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_glimpse_sensor_crops_and_averages():
    image = torch.arange(64.0).reshape(1, 1, 8, 8)
    patches = glimpse_sensor(image, torch.zeros(1, 2), patch=2, scales=3)
    assert patches.shape == (1, 3, 2, 2)
    torch.testing.assert_close(patches[0, 0], torch.tensor([[27.0, 28.0], [35.0, 36.0]]))
    torch.testing.assert_close(patches[0, 2], F.avg_pool2d(image, 4)[0, 0])  # the whole canvas
    # (y, x) = (-1, -1) is the top-left corner: a quarter of the finest patch is inside
    corner = glimpse_sensor(image, -torch.ones(1, 2), patch=2, scales=1)
    torch.testing.assert_close(corner[0, 0], torch.tensor([[0.0, 0.0], [0.0, 0.0]]))


def test_video_labeler_overfits():
    torch.manual_seed(0)
    clips = MovingDigits(n_train=8, n_test=1, frames=4, size=16, noise=0.1)
    model = VideoLabeler(16, (8, 8), feature=32, hidden=32)
    x, y = clips.train_x, clips.train_y
    fit(model, lambda: F.cross_entropy(model(x).flatten(0, 1), y.flatten()), 120, lr=5e-3)
    assert model(x).shape == (8, 4, 10)
    assert (model(x).argmax(-1) == y).float().mean() == 1.0


# ---- checkpoints and CLI ----

@pytest.mark.parametrize("model", [
    Captioner(len(WORDS) + 3, "soft", image_size=16, channels=(4, 8), embed=8, hidden=8, attn_dim=8),
    CNNClassifier(24, (4, 4, 4), self_attention=True), FCClassifier(24, 8),
    RAM(glimpses=2, patch=4, scales=2, glimpse_hidden=8, location_hidden=4, hidden=8, core="rnn"),
    VideoLabeler(16, (4,), feature=8, hidden=8)], ids=lambda m: m.kind)
def test_checkpoint_round_trip(model, tmp_path):
    path = str(tmp_path / "checkpoint.pt")
    vocab = TokenVocab(WORDS) if model.kind == "captioner" else None
    checkpoint.save(path, model, vocab, 3, [{"step": 3, "loss": 1.0}])
    state = checkpoint.load(path, expect_kind=model.kind)
    loaded = checkpoint.build_model(state, impl="torch")
    assert state["step"] == 3 and loaded.config["impl"] == "torch"
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    if vocab:
        assert checkpoint.vocab_from_dict(state["vocab"]).symbols == vocab.symbols


def test_train_captioner_cli_writes_metrics_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "captioner", "--steps", "3", "--eval-every", "3", "--image-size", "16",
            "--train-scenes", "16", "--val-scenes", "8", "--channels", "4,8", "--hidden", "16",
            "--embed", "8", "--attn-dim", "8", "--batch-size", "4", "--beam", "2", "--out", str(out),
            "--no-progress", "--threads", "1"]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "captioner" and metrics["steps"] == 3 and metrics["world_size"] == 1
    assert {"exact_match", "bleu4", "grounding", "unseen_exact_match", "beam2_bleu4"} <= metrics["final"].keys()
    assert metrics["history"][-1]["step"] == 3 and "loss" in metrics["history"][0]
    assert json.loads((out / "config.json").read_text())["attention"] == "soft"
    assert (out / "curves.png").stat().st_size > 0
    # a second run into the same folder needs --resume or --overwrite
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume" in err[0] and "--overwrite" in err[0]
    assert main([*argv[:3], "5", *argv[4:], "--resume"]) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 5
    png = tmp_path / "caption.png"
    assert main(["caption", "--checkpoint", str(out / "checkpoint.pt"), "--random", "--out", str(png)]) == 0
    assert png.stat().st_size > 0
    image = tmp_path / "scene.png"
    from matplotlib.image import imsave
    imsave(image, ShapeScenes(1, 24).images[0].permute(1, 2, 0).clamp(0, 1).numpy())
    assert main(["caption", "--checkpoint", str(out / "checkpoint.pt"), "--image", str(image),
                 "--beam", "2", "--out", str(png)]) == 0


@pytest.mark.parametrize("model,extra", [("ram", ["--glimpses", "2", "--patch", "4", "--hidden", "16"]),
                                         ("cnn", ["--self-attention", "--channels", "4,4,4"]),
                                         ("fc", ["--hidden", "8"]),
                                         ("video", ["--size", "16", "--frames", "3", "--train-clips", "4",
                                                    "--test-clips", "2", "--channels", "4"])])
def test_train_cli_other_models(model, extra, tmp_path):
    size = [] if model == "video" else ["--canvas-size", "24"]
    out = tmp_path / model
    assert main(["train", model, "--steps", "2", "--eval-every", "2", "--batch-size", "4", *size, *extra,
                 "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == model and metrics["steps"] == 2
    key = "test_frame_error" if model == "video" else "test_error"
    assert 0 <= metrics["final"][key] <= 1
    if model == "ram":
        assert (out / "glimpses.png").stat().st_size > 0


@pytest.mark.parametrize("argv", [
    ["train", "captioner", "--attention", "hard"],
    ["train", "captioner", "--channels", "4,x"],
    ["train", "ram", "--glimpses", "0"],
    ["train", "ram", "--std", "-1"],
    ["train", "cnn", "--canvas", "noisy"],
    ["train", "ram", "--device", "nonsense"],
    ["caption", "--checkpoint", "x.pt"],  # neither --image nor --random
    ["caption", "--checkpoint", "x.pt", "--random", "--image", "y.png"],
])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("argv,message", [
    (["train", "captioner", "--image-size", "30"], "--image-size: expected a multiple of 4 (2**pools)"),
    (["train", "cnn", "--canvas-size", "10"], "--canvas-size: expected at least 24"),
    (["caption", "--checkpoint", "missing.pt", "--random"], "--checkpoint: no such file"),
])
def test_bad_values_give_one_line_errors(argv, message, tmp_path, capsys):
    assert main([*argv, *(["--out", str(tmp_path / "run"), "--no-progress"] if argv[0] == "train" else [])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_caption_rejects_a_non_captioner_and_a_bad_image(tmp_path, capsys):
    path = str(tmp_path / "fc.pt")
    checkpoint.save(path, FCClassifier(24, 8), None, 1, [])
    assert main(["caption", "--checkpoint", path, "--random"]) == 2
    assert "holds a fc model, expected captioner" in capsys.readouterr().err
    cap = str(tmp_path / "cap.pt")
    checkpoint.save(cap, Captioner(len(WORDS) + 3, "none", image_size=16, channels=(4,), pools=1, embed=4, hidden=4),
                    TokenVocab(WORDS), 1, [])
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert main(["caption", "--checkpoint", cap, "--image", str(bad)]) == 2
    assert "is not a readable image" in capsys.readouterr().err
