"""Reading and writing checkpoint files for every trainer: atomic saves, and errors that
tell a missing file, a folder, a truncated file and a foreign file apart. In a distributed
run only rank 0 writes (every rank calls save, so that what it gathers is collective)."""
import os

import torch

from .distributed import is_main

ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive


def save(obj, path):
    if not is_main():
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a crash or Ctrl-C mid-save never leaves a half-written file


def load(path, flag="--checkpoint", what="fastseq checkpoint", name="checkpoint.pt", weights_only=True):
    """torch.load(path) with one-line errors naming `flag`. weights_only=False only for the
    resume state a run wrote into its own folder (it holds live environments)."""
    path = str(path)
    if os.path.isdir(path):
        inside = os.path.join(path, name)
        hint = f"; did you mean {inside!r}?" if os.path.isfile(inside) else ""
        raise ValueError(f"{flag}: {path!r} is a folder, expected a {what} file{hint}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag}: no such file: {path!r}")
    with open(path, "rb") as f:
        is_zip = f.read(4) == ZIP_MAGIC
    if not is_zip:
        raise ValueError(f"{flag}: {path!r} is not a {what} (not a file torch.save wrote)")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as exc:  # torch raises several types for a damaged archive
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{flag}: {path!r} is truncated or corrupt ({first})") from None
