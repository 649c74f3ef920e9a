"""The one switch between fastseq's fused layers and PyTorch's own (`--impl`): models
build every layer through layers_for(impl), so both variants share code, names and
state_dicts and a checkpoint trained with one loads into the other."""
import torch

IMPLS = ("fastseq", "torch")


def layers_for(impl: str):
    """(nn, functional) namespaces: fastseq.nn / fastseq.nn.functional or torch's."""
    if impl == "fastseq":
        import fastseq.nn as nn
        import fastseq.nn.functional as functional
        return nn, functional
    if impl == "torch":
        return torch.nn, torch.nn.functional
    raise ValueError(f"impl: expected one of {IMPLS}, got {impl!r}")
