"""Pure-torch reference implementations, used only by tests and benchmarks (never by the
fast path): plain step-by-step loops that are easy to read and check."""
from typing import Optional, Tuple

import torch
from torch import Tensor


def lstm_cell_reference(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor,
                        b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None,
                        w_hr: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """One LSTM step with torch's gate order (i, f, g, o); returns (h', c')."""
    gates = x @ w_ih.t() + h @ w_hh.t()
    if b_ih is not None:
        gates = gates + b_ih
    if b_hh is not None:
        gates = gates + b_hh
    i, f, g, o = gates.chunk(4, dim=1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_new = torch.sigmoid(o) * torch.tanh(c_new)
    if w_hr is not None:
        h_new = h_new @ w_hr.t()
    return h_new, c_new


def lstm_layer_reference(x: Tensor, state: Tuple[Tensor, Tensor], weights: tuple,
                         batch_sizes: Optional[Tensor] = None, reverse: bool = False):
    """One LSTM layer, one direction, over x [T, B, I]; the layer_fn protocol of
    fastseq.nn._recurrent. Returns (out [T, B, P], (h_T [B, P], c_T [B, H]))."""
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    h, c = state
    T = x.size(0)
    outs = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        h_new, c_new = lstm_cell_reference(x[t], h, c, w_ih, w_hh, b_ih, b_hh, w_hr)
        if batch_sizes is not None:
            active = (torch.arange(x.size(1)) < int(batch_sizes[t])).to(x.device).unsqueeze(1)
            h = torch.where(active, h_new, h)
            c = torch.where(active, c_new, c)
            outs[t] = torch.where(active, h_new, torch.zeros_like(h_new))
        else:
            h, c = h_new, c_new
            outs[t] = h_new
    return torch.stack(outs, 0), (h, c)
