"""The fused LSTM as torch.library custom ops (fake kernels for torch.compile, autograd that
saves only the activated gates and cell states): a whole layer+direction, and one cell step.

Eager calls skip the custom-op dispatcher (it costs more than the fused step itself at
decoder sizes): the layer goes through a plain autograd.Function, the cell through
fastseq._C.lstm_cell, whose autograd node is C++; under torch.compile the custom ops are
used so that the graph has no breaks.
"""
import functools
from typing import Optional, Tuple

import torch
from torch import Tensor

from .._ext import _C
from ._cpu_bfloat16 import bfloat16_in_float32_on_cpu
from ._autocast import autocast_as, register_custom_op_autocast
from ._double_backward import create_graph_requested, recomputed_grads
from ._route import use_custom_op
from .reference import lstm_cell_reference, lstm_layer_reference

# ---------------------------------------------------------------------------------------
# One layer, one direction, whole sequence
# ---------------------------------------------------------------------------------------


@torch.library.custom_op("fastseq::lstm_layer_forward", mutates_args=(), device_types=None)
def lstm_layer_forward(input: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor,
                       b_ih: Optional[Tensor], b_hh: Optional[Tensor], w_hr: Optional[Tensor],
                       batch_sizes: Optional[Tensor], reverse: bool
                       ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """input [T, B, I], h0 [B, P], c0 [B, H] -> (output [T, B, P], h_n, c_n, gates, cells);
    gates [T, B, 4H] (activated) and cells [T, B, H] are saved for backward."""
    return tuple(_C.lstm_layer_forward(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                                       batch_sizes, reverse))


@functools.lru_cache(maxsize=None)
def _bfloat16_engine_available() -> bool:
    # engine_runs_bfloat16 reads only the device, dtype, rank and length of its input
    return _C.recurrent_engine_runs_bfloat16(torch.empty(4, 0, 0, dtype=torch.bfloat16), 2)


def _saves_float32(input, c0, w_hr) -> bool:
    """What _C.lstm_layer_forward decides: a CPU bfloat16 layer on the engine's bfloat16
    steps saves its gates and cells in float32 (engine_runs_bfloat16, no projection)."""
    return (input.dtype is torch.bfloat16 and input.device.type == "cpu" and w_hr is None
            and input.dim() == 3 and input.shape[0] >= 4 and c0.shape[1] % 2 == 0 and c0.shape[1] > 0
            and _bfloat16_engine_available())


@lstm_layer_forward.register_fake
def _(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse):
    T, B = input.shape[0], input.shape[1]
    H, P = c0.shape[1], h0.shape[1]
    saved = dict(dtype=torch.float32) if _saves_float32(input, c0, w_hr) else {}
    return (input.new_empty(T, B, P), h0.new_empty(B, P), c0.new_empty(B, H),
            input.new_empty(T, B, 4 * H, **saved), input.new_empty(T, B, H, **saved))


@torch.library.custom_op("fastseq::lstm_layer_backward", mutates_args=(), device_types=None)
def lstm_layer_backward(grad_output: Optional[Tensor], grad_h_n: Optional[Tensor],
                        grad_c_n: Optional[Tensor], input: Tensor, h0: Tensor, c0: Tensor,
                        w_ih: Tensor, w_hh: Tensor, w_hr: Optional[Tensor],
                        batch_sizes: Optional[Tensor], reverse: bool, has_bias: bool,
                        output: Tensor, gates: Tensor, cells: Tensor, need_d_input: bool
                        ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (d_input or [0] when not need_d_input, d_h0, d_c0, d_w_ih, d_w_hh, d_bias [4H] or [0], d_w_hr [P, H] or [0])."""
    return tuple(_C.lstm_layer_backward(grad_output, grad_h_n, grad_c_n, input, h0, c0, w_ih,
                                        w_hh, w_hr, batch_sizes, reverse, has_bias, output,
                                        gates, cells, need_d_input))


@lstm_layer_backward.register_fake
def _(grad_output, grad_h_n, grad_c_n, input, h0, c0, w_ih, w_hh, w_hr, batch_sizes, reverse,
      has_bias, output, gates, cells, need_d_input):
    H = c0.shape[1]
    return (torch.empty_like(input, memory_format=torch.contiguous_format) if need_d_input
            else input.new_empty(0),
            h0.new_empty(h0.shape), c0.new_empty(c0.shape), w_ih.new_empty(w_ih.shape),
            w_hh.new_empty(w_hh.shape), input.new_empty(4 * H if has_bias else 0),
            w_hr.new_empty(w_hr.shape) if w_hr is not None else input.new_empty(0))


def _layer_setup_context(ctx, inputs, output):
    input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse = inputs
    out, _, _, gates, cells = output
    # The biases only serve a double backward's recomputation (references, no copies).
    ctx.save_for_backward(input, h0, c0, w_ih, w_hh, w_hr, batch_sizes, out, gates, cells, b_ih, b_hh)
    ctx.reverse = reverse
    ctx.has_b_ih, ctx.has_b_hh = b_ih is not None, b_hh is not None
    ctx.mark_non_differentiable(gates, cells)


def _layer_grads(ctx, backward_op, grad_output, grad_h_n, grad_c_n):
    """The layer's gradients from what _layer_setup_context saved; backward_op is the custom
    op (compiled path) or fastseq._C's function (eager path), which compute the same."""
    input, h0, c0, w_ih, w_hh, w_hr, batch_sizes, out, gates, cells, b_ih, b_hh = ctx.saved_tensors
    if create_graph_requested():
        return recomputed_grads(_layer_reference, (input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                                                   batch_sizes, ctx.reverse),
                                ctx.needs_input_grad, (grad_output, grad_h_n, grad_c_n))
    d_input, d_h0, d_c0, d_w_ih, d_w_hh, d_bias, d_w_hr = backward_op(
        grad_output, grad_h_n, grad_c_n, input, h0, c0, w_ih, w_hh, w_hr, batch_sizes,
        ctx.reverse, ctx.has_b_ih or ctx.has_b_hh, out, gates, cells, ctx.needs_input_grad[0])
    return (d_input if ctx.needs_input_grad[0] else None, d_h0, d_c0, d_w_ih, d_w_hh, d_bias if ctx.has_b_ih else None,
            d_bias if ctx.has_b_hh else None, d_w_hr if w_hr is not None else None, None, None)


def _layer_reference(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse):
    out, (h_n, c_n) = lstm_layer_reference(input, (h0, c0), (w_ih, w_hh, b_ih, b_hh, w_hr),
                                           batch_sizes, reverse)
    return out, h_n, c_n


def _layer_backward(ctx, grad_output, grad_h_n, grad_c_n, _grad_gates, _grad_cells):
    return _layer_grads(ctx, lstm_layer_backward, grad_output, grad_h_n, grad_c_n)


lstm_layer_forward.register_autograd(_layer_backward, setup_context=_layer_setup_context)
register_custom_op_autocast("fastseq::lstm_layer_forward", "lstm")


class _LSTMLayerFunction(torch.autograd.Function):
    """Eager fast path of lstm_layer_forward: the same C++ kernels and autograd formula
    without the custom-op dispatcher's Python overhead (tens of microseconds per call).
    Old-style (forward takes ctx, no setup_context): in torch 2.13 that costs ~60 us less
    per apply than the new style."""

    @staticmethod
    def forward(ctx, input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse):
        # Unused outputs (gates and cells always, often h_n / c_n) must reach backward as
        # None, not as zero tensors autograd would allocate and fill ([T, B, 4H] for gates:
        # measured 1.3 ms of a 7 ms LSTM training step at T=100 B=64 H=64).
        ctx.set_materialize_grads(False)
        output = tuple(_C.lstm_layer_forward(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                                             batch_sizes, reverse))
        _layer_setup_context(ctx, (input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse),
                             output)
        return output

    @staticmethod
    def backward(ctx, grad_output, grad_h_n, grad_c_n, _grad_gates, _grad_cells):
        return _layer_grads(ctx, _C.lstm_layer_backward, grad_output, grad_h_n, grad_c_n)


def _runs_bfloat16(x, state, weights, *rest):
    """An LSTM layer that the engine runs in bfloat16 itself (no projection, not being
    traced by torch.compile): inference, and training, whose backward runs the engine's
    bfloat16 backward steps (float32 pointwise, bfloat16 brgemms)."""
    return (weights[4] is None and not use_custom_op(x)
            and _C.recurrent_engine_runs_bfloat16(x, state[1].shape[-1]))


@autocast_as("lstm")
@bfloat16_in_float32_on_cpu(native=_runs_bfloat16)
def lstm_layer(x: Tensor, state: Tuple[Tensor, Tensor], weights: tuple,
               batch_sizes: Optional[Tensor] = None, reverse: bool = False):
    """The layer_fn of fastseq.nn._recurrent: (out [T, B, P], (h_n, c_n)).

    Double backward (create_graph=True) recomputes the layer with the pure-torch reference
    (fastseq.ops.reference) and differentiates that: correct, not fused."""
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    args = (x, state[0], state[1], w_ih, w_hh, b_ih, b_hh, w_hr, batch_sizes, reverse)
    if use_custom_op(x):
        out, h_n, c_n, _, _ = lstm_layer_forward(*args)
    elif torch.is_grad_enabled():
        out, h_n, c_n, _, _ = _LSTMLayerFunction.apply(*args)
    else:  # inference: straight to C++, nothing saved for backward
        out, h_n, c_n, _, _ = _C.lstm_layer_forward(*args, False)
    return out, (h_n, c_n)


# ---------------------------------------------------------------------------------------
# One LSTMCell step
# ---------------------------------------------------------------------------------------


@torch.library.custom_op("fastseq::lstm_cell_forward", mutates_args=(), device_types=None)
def lstm_cell_forward(input: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor,
                      b_ih: Optional[Tensor], b_hh: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    """input [B, I], h / c [B, H] -> (h_next, c_next, gates [B, 4H] activated)."""
    return tuple(_C.lstm_cell_forward(input, h, c, w_ih, w_hh, b_ih, b_hh))


@lstm_cell_forward.register_fake
def _(input, h, c, w_ih, w_hh, b_ih, b_hh):
    B, H = c.shape
    return input.new_empty(B, H), input.new_empty(B, H), input.new_empty(B, 4 * H)


@torch.library.custom_op("fastseq::lstm_cell_backward", mutates_args=(), device_types=None)
def lstm_cell_backward(grad_h_next: Optional[Tensor], grad_c_next: Optional[Tensor], input: Tensor,
                       h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, has_bias: bool,
                       gates: Tensor, c_next: Tensor
                       ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> (d_input, d_h, d_c, d_w_ih, d_w_hh, d_bias [4H] or [0])."""
    return tuple(_C.lstm_cell_backward(grad_h_next, grad_c_next, input, h, c, w_ih, w_hh,
                                       has_bias, gates, c_next))


@lstm_cell_backward.register_fake
def _(grad_h_next, grad_c_next, input, h, c, w_ih, w_hh, has_bias, gates, c_next):
    return (input.new_empty(input.shape), h.new_empty(h.shape), c.new_empty(c.shape),
            w_ih.new_empty(w_ih.shape), w_hh.new_empty(w_hh.shape),
            input.new_empty(w_ih.shape[0] if has_bias else 0))


def _cell_setup_context(ctx, inputs, output):
    input, h, c, w_ih, w_hh, b_ih, b_hh = inputs
    _, c_next, gates = output
    ctx.save_for_backward(input, h, c, w_ih, w_hh, gates, c_next, b_ih, b_hh)
    ctx.has_b_ih, ctx.has_b_hh = b_ih is not None, b_hh is not None
    ctx.mark_non_differentiable(gates)


def _cell_backward(ctx, grad_h_next, grad_c_next, _grad_gates):
    input, h, c, w_ih, w_hh, gates, c_next, b_ih, b_hh = ctx.saved_tensors
    if create_graph_requested():
        return recomputed_grads(lstm_cell_reference, (input, h, c, w_ih, w_hh, b_ih, b_hh),
                                ctx.needs_input_grad, (grad_h_next, grad_c_next))
    d_input, d_h, d_c, d_w_ih, d_w_hh, d_bias = lstm_cell_backward(
        grad_h_next, grad_c_next, input, h, c, w_ih, w_hh, ctx.has_b_ih or ctx.has_b_hh, gates, c_next)
    return (d_input, d_h, d_c, d_w_ih, d_w_hh, d_bias if ctx.has_b_ih else None,
            d_bias if ctx.has_b_hh else None)


lstm_cell_forward.register_autograd(_cell_backward, setup_context=_cell_setup_context)
register_custom_op_autocast("fastseq::lstm_cell_forward", "lstm_cell")


@autocast_as("lstm_cell")
def lstm_cell(input: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor,
              b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """One fused LSTMCell step: (h_next, c_next). Double backward recomputes the step with
    differentiable ATen ops (in the C++ autograd node)."""
    if use_custom_op(input):
        h_next, c_next, _ = lstm_cell_forward(input, h, c, w_ih, w_hh, b_ih, b_hh)
    elif torch.is_grad_enabled():  # C++ autograd node: a Python Function costs ~3x more per step
        h_next, c_next = _C.lstm_cell(input, h, c, w_ih, w_hh, b_ih, b_hh)
    else:  # inference in a decoder loop: straight to C++ (Function.apply costs ~25 us)
        h_next, c_next, _ = _C.lstm_cell_forward(input, h, c, w_ih, w_hh, b_ih, b_hh)
    return h_next, c_next
