"""Checkpoints: one file holding the model kind, its constructor config, vocabulary,
weights, optimizer/schedule/data positions and loss history, so training resumes and
sampling needs nothing else. Loaded with weights_only=True (no pickled code)."""
import os

import torch

from .char_lm import CharLM
from .gpt import GPT
from .seq2seq import Seq2Seq
from .vision.captioner import Captioner
from .vision.classifiers import CNNClassifier, FCClassifier
from .vision.ram import RAM
from .vision.video import VideoLabeler
from .vocab import CharVocab, TokenVocab

FORMAT = "fastseq-model-v1"
MODEL_CLASSES = {cls.kind: cls for cls in (CharLM, GPT, Seq2Seq, Captioner, CNNClassifier,
                                           FCClassifier, RAM, VideoLabeler)}


def save(path, model, vocab, step, history, optimizer=None, scheduler=None, task=None, data=None):
    state = {
        "format": FORMAT,
        "kind": model.kind,
        "config": dict(model.config),
        "vocab": vocab_to_dict(vocab),
        "model": model.state_dict(),
        "step": step,
        "history": history,
        "data": data,
        "optimizer": optimizer.state_dict() if optimizer else None,
        "scheduler": scheduler.state_dict() if scheduler else None,
        "task": task.state_dict() if task else None,
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)  # never leave a half-written checkpoint behind


def load(path, expect_kind=None):
    """The checkpoint dict; ValueError for a file that is not one, or of another model."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--checkpoint: no such file: {path!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a non-checkpoint file
        raise ValueError(f"--checkpoint: {path!r} is not a fastseq model checkpoint "
                         f"({type(exc).__name__})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"--checkpoint: {path!r} is not a fastseq model checkpoint "
                         f"(expected format {FORMAT!r})")
    kinds = (expect_kind,) if isinstance(expect_kind, str) else expect_kind
    if kinds and state["kind"] not in kinds:
        raise ValueError(f"--checkpoint: {path!r} holds a {state['kind']} model, expected "
                         f"{' or '.join(kinds)}")
    return state


def build_model(state, impl=None, device="cpu"):
    """The model of a loaded checkpoint, weights in place; impl overrides the saved one."""
    config = dict(state["config"])
    if impl:
        config["impl"] = impl
    model = MODEL_CLASSES[state["kind"]](**config)
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def vocab_to_dict(vocab):
    """None for the classifiers (labels are class indices), else plain lists."""
    if vocab is None:
        return None
    if isinstance(vocab, CharVocab):
        return {"chars": vocab.chars}
    if isinstance(vocab, TokenVocab):
        return {"tokens": vocab.symbols}
    src, tgt = vocab
    return {"src": src.symbols, "tgt": tgt.symbols}


def vocab_from_dict(data):
    if data is None:
        return None
    if "tokens" in data:
        return TokenVocab(data["tokens"])
    if "chars" in data:
        return CharVocab(data["chars"])
    return TokenVocab(data["src"]), TokenVocab(data["tgt"])
