"""Double backward (create_graph=True) of the fused ops. The fused backward kernels are not
themselves differentiable, so when autograd asks for differentiable gradients (a gradient
penalty, Hessian-vector products) the op is recomputed with its pure-torch reference
(fastseq.ops.reference, .reference_gru_rnn, .reference_attention) and differentiated by
autograd. First-order training never takes this path; it is as slow as the reference."""
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor


def create_graph_requested() -> bool:
    """In a backward, grad mode is on only under create_graph=True."""
    return torch.is_grad_enabled()


def recomputed_grads(forward: Callable, inputs: Sequence, needs_input_grad: Sequence[bool],
                     grad_outputs: Sequence[Optional[Tensor]]) -> tuple:
    """Gradients of forward(*inputs) (a flat sequence of output tensors) with respect to the
    inputs that need them, contracted with grad_outputs (None = no gradient), with a graph.
    Returns one entry per input (None where no gradient is wanted or defined)."""
    with torch.enable_grad():
        outputs = forward(*inputs)
    pairs = [(o, g) for o, g in zip(outputs, grad_outputs)
             if g is not None and isinstance(o, Tensor) and o.requires_grad]
    wrt = [i for i, t in enumerate(inputs)
           if needs_input_grad[i] and isinstance(t, Tensor) and t.requires_grad]
    result = [None] * len(inputs)
    if not pairs or not wrt:
        return tuple(result)
    grads = torch.autograd.grad([o for o, _ in pairs], [inputs[i] for i in wrt],
                                [g for _, g in pairs], create_graph=True, allow_unused=True)
    for i, g in zip(wrt, grads):
        result[i] = g
    return tuple(result)
