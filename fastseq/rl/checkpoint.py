"""Agent checkpoints: network weights plus everything needed to rebuild the network and
its environment, saved as plain types so torch.load(weights_only=True) can read them."""
import os

import torch

from .networks import build_network

FORMAT = "fastseq-rl-checkpoint"
VERSION = 1
REQUIRED = ("algo", "env", "network", "state_dict")


def save_checkpoint(path, *, algo, env, network_spec, model, config, stats=None):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, "algo": algo, "env": dict(env),
               "network": dict(network_spec), "state_dict": model.state_dict(),
               "config": dict(config), "stats": dict(stats or {})}
    tmp = path + ".tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)  # a crash mid-save never leaves a truncated checkpoint


def load_checkpoint(path):
    """Returns (model in eval mode, payload dict). Clear errors for a missing, unreadable or
    foreign file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise ValueError(f"checkpoint {path!r} is not a readable torch file "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path!r} is not a fastseq RL checkpoint "
                         f"(expected a dict with format={FORMAT!r})")
    if payload.get("version") != VERSION:
        raise ValueError(f"checkpoint {path!r} has version {payload.get('version')!r}; this fastseq reads {VERSION}")
    missing = [k for k in REQUIRED if k not in payload]
    if missing:
        raise ValueError(f"checkpoint {path!r} lacks the fields {missing}")
    model = build_network(payload["network"])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {path!r}: weights do not fit the network it describes: {exc}") from None
    model.eval()
    return model, payload
