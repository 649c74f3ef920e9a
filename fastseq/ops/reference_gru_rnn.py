"""Pure-torch GRU and Elman-RNN references for tests and benchmarks (never the fast path):
plain step-by-step loops following the layer_fn protocol of fastseq.nn._recurrent."""
from typing import Optional, Tuple

import torch
from torch import Tensor


def gru_cell_reference(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor,
                       b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None) -> Tensor:
    """One GRU step in torch's gate order (r, z, n): h' = (1 - z) * n + z * h."""
    gi = x @ w_ih.t() + (b_ih if b_ih is not None else 0)
    gh = h @ w_hh.t() + (b_hh if b_hh is not None else 0)
    i_r, i_z, i_n = gi.chunk(3, dim=1)
    h_r, h_z, h_n = gh.chunk(3, dim=1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return (1 - z) * n + z * h


def rnn_cell_reference(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor,
                       b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None,
                       nonlinearity: str = "tanh") -> Tensor:
    """One Elman step: h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu."""
    a = x @ w_ih.t() + h @ w_hh.t()
    if b_ih is not None:
        a = a + b_ih
    if b_hh is not None:
        a = a + b_hh
    return torch.relu(a) if nonlinearity == "relu" else torch.tanh(a)


def _run_layer(step, x: Tensor, h: Tensor, batch_sizes: Optional[Tensor], reverse: bool):
    T = x.size(0)
    outs = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        h_new = step(x[t], h)
        if batch_sizes is not None:
            active = (torch.arange(x.size(1)) < int(batch_sizes[t])).to(x.device).unsqueeze(1)
            h = torch.where(active, h_new, h)
            outs[t] = torch.where(active, h_new, torch.zeros_like(h_new))
        else:
            h = h_new
            outs[t] = h_new
    out = torch.stack(outs, 0) if T else x.new_zeros(0, x.size(1), h.size(1))
    return out, (h,)


def gru_layer_reference(x: Tensor, state: Tuple[Tensor], weights: tuple,
                        batch_sizes: Optional[Tensor] = None, reverse: bool = False):
    """One GRU layer, one direction, over x [T, B, I] -> (out [T, B, H], (h_T,))."""
    return _run_layer(lambda xt, h: gru_cell_reference(xt, h, *weights), x, state[0], batch_sizes, reverse)


def rnn_layer_reference(nonlinearity: str = "tanh"):
    """layer_fn of one Elman-RNN layer, one direction, with a fixed nonlinearity."""
    def layer(x: Tensor, state: Tuple[Tensor], weights: tuple,
              batch_sizes: Optional[Tensor] = None, reverse: bool = False):
        return _run_layer(lambda xt, h: rnn_cell_reference(xt, h, *weights, nonlinearity=nonlinearity),
                          x, state[0], batch_sizes, reverse)
    return layer
