"""Checkpoints: one file holding the model kind, its constructor config, vocabulary,
weights, optimizer/schedule/data positions and loss history, so training resumes and
sampling needs nothing else. Loaded with weights_only=True (no pickled code)."""
import torch

from .. import ckptio, distributed
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
    """Everything to sample from the model or, with optimizer/scheduler/task, to resume
    training exactly (the torch RNG state too, for dropout: every rank's in a distributed
    run). Called on every rank of a distributed run (gathering is collective); rank 0 writes."""
    dist = distributed.current()
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
        "torch_rng": torch.get_rng_state(),
        "world_size": dist.world_size,
        "rank_rng": dist.rng_states() if dist.enabled else None,
    }
    ckptio.save(state, path)


def load(path, expect_kind=None, flag="--checkpoint"):
    """The checkpoint dict; ValueError naming `flag` for a file that is not one, or of another model."""
    state = ckptio.load(path, flag, what="fastseq model checkpoint")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{flag}: {path!r} is not a fastseq model checkpoint "
                         f"(expected format {FORMAT!r})")
    kinds = (expect_kind,) if isinstance(expect_kind, str) else expect_kind
    if kinds and state["kind"] not in kinds:
        raise ValueError(f"{flag}: {path!r} holds a {state['kind']} model, expected "
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
