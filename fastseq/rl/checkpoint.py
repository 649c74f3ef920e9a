"""Agent checkpoints: network weights plus everything needed to rebuild the network and
its environment, saved as plain types so torch.load(weights_only=True) can read them."""
from .. import ckptio
from .networks import build_network

FORMAT = "fastseq-rl-checkpoint"
VERSION = 1
REQUIRED = ("algo", "env", "network", "state_dict")


def save_checkpoint(path, *, algo, env, network_spec, model, config, stats=None):
    payload = {"format": FORMAT, "version": VERSION, "algo": algo, "env": dict(env),
               "network": dict(network_spec), "state_dict": model.state_dict(),
               "config": dict(config), "stats": dict(stats or {})}
    ckptio.save(payload, path)


def load_checkpoint(path):
    """Returns (model in eval mode, payload dict). Clear errors for a missing, truncated or
    foreign file, or a folder."""
    payload = ckptio.load(path, what="fastseq RL checkpoint", name="best.pt")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"--checkpoint: {path!r} is not a fastseq RL checkpoint "
                         f"(expected a dict with format={FORMAT!r})")
    if payload.get("version") != VERSION:
        raise ValueError(f"--checkpoint: {path!r} has version {payload.get('version')!r}; this fastseq reads {VERSION}")
    missing = [k for k in REQUIRED if k not in payload]
    if missing:
        raise ValueError(f"--checkpoint: {path!r} lacks the fields {missing}")
    model = build_network(payload["network"])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"--checkpoint: {path!r}: weights do not fit the network it describes: {exc}") from None
    model.eval()
    return model, payload
