"""Fused Elman RNN (tanh or relu) over a sequence (one layer, one direction): torch.library
custom ops fastseq::rnn_forward / rnn_backward with fake kernels and an autograd formula, and
the eager fast path (autograd.Function straight to fastseq._C) used outside torch.compile.
Backward needs only the output: both activations' derivatives are functions of it."""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .._ext import _C
from ._cpu_bfloat16 import bfloat16_in_float32_on_cpu
from ._autocast import autocast_as, register_custom_op_autocast
from ._double_backward import create_graph_requested, recomputed_grads
from ._route import use_custom_op
from .reference_gru_rnn import rnn_layer_reference
from ._gru_rnn_common import runs_bfloat16, fake_backward_grads, needs_grad, zeros_if_none


@torch.library.custom_op("fastseq::rnn_forward", mutates_args=())
def rnn_forward(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                b_hh: Optional[Tensor], batch_sizes: Optional[Tensor], reverse: bool,
                nonlinearity: str) -> Tuple[Tensor, Tensor]:
    """input [T, B, I], hx [B, H] -> (output [T, B, H], h_n [B, H])."""
    return tuple(_C.rnn_forward(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, nonlinearity))


@rnn_forward.register_fake
def _(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, nonlinearity):
    return input.new_empty(input.size(0), input.size(1), hx.size(1)), hx.new_empty(hx.shape)


@torch.library.custom_op("fastseq::rnn_backward", mutates_args=())
def rnn_backward(grad_output: Tensor, grad_hy: Tensor, input: Tensor, hx: Tensor, w_ih: Tensor,
                 w_hh: Tensor, output: Tensor, batch_sizes: Optional[Tensor], reverse: bool,
                 nonlinearity: str, need_input_grad: bool, need_hx_grad: bool) -> List[Tensor]:
    """-> [d input, d hx, d w_ih, d w_hh, d b_ih, d b_hh]; d input / d hx empty unless needed."""
    return _C.rnn_backward(grad_output, grad_hy, input, hx, w_ih, w_hh, output, batch_sizes,
                           reverse, nonlinearity, need_input_grad, need_hx_grad)


@rnn_backward.register_fake
def _(grad_output, grad_hy, input, hx, w_ih, w_hh, output, batch_sizes, reverse, nonlinearity,
      need_input_grad, need_hx_grad):
    return fake_backward_grads(input, hx, w_ih, w_hh, need_input_grad, need_hx_grad)


def _save(ctx, input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, nonlinearity, out):
    # The biases only serve a double backward's recomputation (references, no copies).
    ctx.save_for_backward(input, hx, w_ih, w_hh, out, batch_sizes, b_ih, b_hh)
    ctx.reverse, ctx.nonlinearity = reverse, nonlinearity
    ctx.has_bias = (b_ih is not None, b_hh is not None)


def _setup_context(ctx, inputs, output):
    _save(ctx, *inputs, output[0])


def _backward(ctx, grad_out, grad_hy, backward_fn):
    """Gradients of (input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, nonlinearity)."""
    input, hx, w_ih, w_hh, out, batch_sizes, b_ih, b_hh = ctx.saved_tensors
    if create_graph_requested():
        return recomputed_grads(_layer_reference, (input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes,
                                                   ctx.reverse, ctx.nonlinearity),
                                ctx.needs_input_grad, (grad_out, grad_hy))
    dx, dh, dw_ih, dw_hh, db_ih, db_hh = backward_fn(
        zeros_if_none(grad_out, out), zeros_if_none(grad_hy, hx), input, hx, w_ih, w_hh, out,
        batch_sizes, ctx.reverse, ctx.nonlinearity, ctx.needs_input_grad[0], ctx.needs_input_grad[1])
    return (dx if ctx.needs_input_grad[0] else None, dh if ctx.needs_input_grad[1] else None, dw_ih, dw_hh,
            db_ih if ctx.has_bias[0] else None, db_hh if ctx.has_bias[1] else None, None, None, None)


def _layer_reference(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, nonlinearity):
    out, (h_n,) = rnn_layer_reference(nonlinearity)(input, (hx,), (w_ih, w_hh, b_ih, b_hh),
                                                    batch_sizes, reverse)
    return out, h_n


def _op_backward(ctx, grad_out, grad_hy):
    return _backward(ctx, grad_out, grad_hy, torch.ops.fastseq.rnn_backward)


rnn_forward.register_autograd(_op_backward, setup_context=_setup_context)
register_custom_op_autocast("fastseq::rnn_forward", "rnn")


class _RNNEager(torch.autograd.Function):
    """The same forward/backward as the custom ops, called on fastseq._C directly. Old-style
    (forward takes ctx): torch 2.13's apply costs ~60 us more per call with setup_context."""

    @staticmethod
    def forward(ctx, input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, nonlinearity):
        ctx.set_materialize_grads(False)  # an unused h_n reaches backward as None, not zeros
        out, h_n = _C.rnn_forward(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, nonlinearity)
        _save(ctx, input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, nonlinearity, out)
        return out, h_n

    @staticmethod
    def backward(ctx, grad_out, grad_hy):
        return _backward(ctx, grad_out, grad_hy, _C.rnn_backward)


@autocast_as("rnn")
@bfloat16_in_float32_on_cpu(native=runs_bfloat16)
def rnn(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
        b_hh: Optional[Tensor] = None, batch_sizes: Optional[Tensor] = None, reverse: bool = False,
        nonlinearity: str = "tanh") -> Tuple[Tensor, Tensor]:
    """Differentiable fused Elman RNN layer: h' = act(W_ih x + b_ih + W_hh h + b_hh),
    input [T, B, I], hx [B, H] -> (output [T, B, H], h_n [B, H]); batch_sizes as in
    fastseq.ops.gru.gru. Double backward recomputes with the pure-torch reference."""
    if use_custom_op(input):
        return torch.ops.fastseq.rnn_forward(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, nonlinearity)
    if needs_grad(input, hx, w_ih, w_hh, b_ih, b_hh):
        return _RNNEager.apply(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, nonlinearity)
    return tuple(_C.rnn_forward(input, hx, w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, nonlinearity))


def rnn_layer(nonlinearity: str):
    """layer_fn (for fastseq.nn._recurrent.run_recurrent_stack) with a fixed nonlinearity."""
    def layer(x, state, weights, batch_sizes, reverse):
        w_ih, w_hh, b_ih, b_hh = weights
        out, h_n = rnn(x, state[0], w_ih, w_hh, b_ih, b_hh, batch_sizes, reverse, nonlinearity)
        return out, (h_n,)
    return layer


@autocast_as("rnn_cell")
def rnn_cell(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor] = None,
             b_hh: Optional[Tensor] = None, nonlinearity: str = "tanh") -> Tensor:
    """One RNN step, input [B, I], hx [B, H] -> h' [B, H]. Eager: fastseq._C.rnn_cell (C++
    autograd node, as fastseq.ops.gru.gru_cell); under torch.compile: the layer custom op
    with T = 1."""
    if use_custom_op(input):
        return rnn(input.unsqueeze(0), hx, w_ih, w_hh, b_ih, b_hh, None, False, nonlinearity)[1]
    if torch.is_grad_enabled():  # the C++ node records nothing when no input needs grad
        return _C.rnn_cell(input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity)
    return _C.rnn_cell_forward(input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity)
