"""Fused GRU over a sequence (one layer, one direction): torch.library custom ops
fastseq::gru_forward / gru_backward with fake kernels and an autograd formula, and the
eager fast path (autograd.Function straight to fastseq._C) used outside torch.compile."""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .._ext import _C
from ._cpu_bfloat16 import bfloat16_in_float32_on_cpu
from ._autocast import autocast_as, register_custom_op_autocast
from ._double_backward import create_graph_requested, recomputed_grads
from ._route import use_custom_op
from .reference_gru_rnn import gru_layer_reference
from ._gru_rnn_common import runs_bfloat16, fake_backward_grads, accumulation_dtype, needs_grad, zeros_if_none


@torch.library.custom_op("fastseq::gru_forward", mutates_args=())
def gru_forward(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                b_hh: Optional[Tensor], batch_sizes: Optional[Tensor], reverse: bool,
                need_workspace: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """input [T, B, I], hx [B, H] -> (output [T, B, H], h_n [B, H], workspace)."""
    return tuple(_C.gru_forward(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, need_workspace))


@gru_forward.register_fake
def _(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, need_workspace):
    T, B, H = input.size(0), input.size(1), hx.size(1)
    acc = accumulation_dtype(input.dtype)
    ws = input.new_empty((T, B, 4 * H) if need_workspace else (0,), dtype=acc)
    return input.new_empty(T, B, H), hx.new_empty(B, H), ws


@torch.library.custom_op("fastseq::gru_backward", mutates_args=())
def gru_backward(grad_output: Tensor, grad_hy: Tensor, input: Tensor, hx: Tensor, w_ih: Tensor,
                 w_hh: Tensor, output: Tensor, workspace: Tensor, batch_sizes: Optional[Tensor],
                 reverse: bool, need_input_grad: bool, need_hx_grad: bool) -> List[Tensor]:
    """-> [d input, d hx, d w_ih, d w_hh, d b_ih, d b_hh]; d input / d hx empty unless needed."""
    return _C.gru_backward(grad_output, grad_hy, input, hx, w_ih, w_hh, output, workspace,
                           batch_sizes, reverse, need_input_grad, need_hx_grad)


@gru_backward.register_fake
def _(grad_output, grad_hy, input, hx, w_ih, w_hh, output, workspace, batch_sizes, reverse,
      need_input_grad, need_hx_grad):
    return fake_backward_grads(input, hx, w_ih, w_hh, need_input_grad, need_hx_grad)


def _save(ctx, input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, out, ws):
    # The biases only serve a double backward's recomputation (references, no copies).
    ctx.save_for_backward(input, hx, w_ih, w_hh, out, ws, batch_sizes, b_ih, b_hh)
    ctx.reverse = reverse
    ctx.has_bias = (b_ih is not None, b_hh is not None)


def _setup_context(ctx, inputs, output):
    *layer_inputs, _need_workspace = inputs
    _save(ctx, *layer_inputs, output[0], output[2])


def _backward(ctx, grad_out, grad_hy, backward_fn):
    """Gradients of (input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse)."""
    input, hx, w_ih, w_hh, out, ws, batch_sizes, b_ih, b_hh = ctx.saved_tensors
    if create_graph_requested():
        return recomputed_grads(_layer_reference, (input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, ctx.reverse),
                                ctx.needs_input_grad, (grad_out, grad_hy))
    if ws.numel() == 0 and out.numel() != 0:
        raise RuntimeError("fastseq gru: backward needs the workspace of a forward run with "
                           "need_workspace=True (the forward ran without grad)")
    dx, dh, dw_ih, dw_hh, db_ih, db_hh = backward_fn(
        zeros_if_none(grad_out, out), zeros_if_none(grad_hy, hx), input, hx, w_ih, w_hh, out, ws,
        batch_sizes, ctx.reverse, ctx.needs_input_grad[0], ctx.needs_input_grad[1])
    return (dx if ctx.needs_input_grad[0] else None, dh if ctx.needs_input_grad[1] else None, dw_ih, dw_hh,
            db_ih if ctx.has_bias[0] else None, db_hh if ctx.has_bias[1] else None, None, None)


def _layer_reference(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse):
    out, (h_n,) = gru_layer_reference(input, (hx,), (w_ih, w_hh, b_ih, b_hh), batch_sizes, reverse)
    return out, h_n


def _op_backward(ctx, grad_out, grad_hy, _grad_ws):
    return _backward(ctx, grad_out, grad_hy, torch.ops.fastseq.gru_backward) + (None,)


gru_forward.register_autograd(_op_backward, setup_context=_setup_context)
register_custom_op_autocast("fastseq::gru_forward", "gru")


class _GRUEager(torch.autograd.Function):
    """The same forward/backward as the custom ops, called on fastseq._C directly. Old-style
    (forward takes ctx): torch 2.13's apply costs ~60 us more per call with setup_context."""

    @staticmethod
    def forward(ctx, input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse):
        ctx.set_materialize_grads(False)  # an unused h_n reaches backward as None, not zeros
        out, h_n, ws = _C.gru_forward(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, True)
        _save(ctx, input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, out, ws)
        return out, h_n

    @staticmethod
    def backward(ctx, grad_out, grad_hy):
        return _backward(ctx, grad_out, grad_hy, _C.gru_backward)


@autocast_as("gru")
@bfloat16_in_float32_on_cpu(native=runs_bfloat16)
def gru(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
        b_hh: Optional[Tensor] = None, batch_sizes: Optional[Tensor] = None,
        reverse: bool = False) -> Tuple[Tensor, Tensor]:
    """Differentiable fused GRU layer: input [T, B, I], hx [B, H] -> (output [T, B, H], h_n [B, H]).

    batch_sizes (int64 cpu [T], non-increasing): only rows < batch_sizes[t] step at time t;
    the others keep their state and output 0 (PackedSequence semantics). Double backward
    (create_graph=True) recomputes the layer with the pure-torch reference and
    differentiates that: correct, not fused."""
    if use_custom_op(input):
        need_ws = needs_grad(input, hx, w_ih, w_hh, b_ih, b_hh)
        out, h_n, _ = torch.ops.fastseq.gru_forward(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, need_ws)
        return out, h_n
    if needs_grad(input, hx, w_ih, w_hh, b_ih, b_hh):
        return _GRUEager.apply(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse)
    out, h_n, _ = _C.gru_forward(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, False)
    return out, h_n


def gru_layer(x: Tensor, state: Tuple[Tensor], weights: tuple, batch_sizes: Optional[Tensor],
              reverse: bool):
    """layer_fn for fastseq.nn._recurrent.run_recurrent_stack."""
    w_ih, w_hh, b_ih, b_hh = weights
    out, h_n = gru(x, state[0], w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse)
    return out, (h_n,)


@autocast_as("gru_cell")
def gru_cell(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
             b_hh: Optional[Tensor] = None) -> Tensor:
    """One GRU step, input [B, I], hx [B, H] -> h' [B, H]. Eager: fastseq._C.gru_cell, whose
    autograd node is C++ (a Python autograd.Function would cost more per step than torch's
    own cell); under torch.compile: the layer custom op with T = 1."""
    if use_custom_op(input):
        return gru(input.unsqueeze(0), hx, w_ih, w_hh, b_ih, b_hh)[1]
    if torch.is_grad_enabled():  # the C++ node records nothing when no input needs grad
        return _C.gru_cell(input, hx, w_ih, w_hh, b_ih, b_hh)
    return _C.gru_cell_forward(input, hx, w_ih, w_hh, b_ih, b_hh, False)[0]
