"""Helpers shared by the fused GRU and RNN op wrappers (fastseq.ops.gru / .rnn)."""
from typing import Optional

import torch
from torch import Tensor

from .._ext import _C
from ._route import use_custom_op


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels accumulate in: float32 for half/bfloat16, else the dtype itself."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def needs_grad(*tensors: Optional[Tensor]) -> bool:
    """True when autograd will want a backward through these inputs (decides whether the
    forward keeps what backward needs)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def zeros_if_none(grad: Optional[Tensor], like: Tensor) -> Tensor:
    return torch.zeros_like(like) if grad is None else grad


def fake_backward_grads(input: Tensor, hx: Tensor, w_ih: Tensor, w_hh: Tensor,
                        need_input_grad: bool, need_hx_grad: bool) -> list:
    """Shapes of [d input, d hx, d w_ih, d w_hh, d b_ih, d b_hh] for the backward ops' fake
    kernels; d input / d hx are empty when not wanted, as the C++ backward returns them."""
    gates = w_ih.size(0)
    dx = input.new_empty(input.shape) if need_input_grad else input.new_empty(0)
    dh = hx.new_empty(hx.shape) if need_hx_grad else hx.new_empty(0)
    return [dx, dh, w_ih.new_empty(w_ih.shape), w_hh.new_empty(w_hh.shape),
            w_ih.new_empty(gates), w_ih.new_empty(gates)]


def runs_bfloat16(input, hx, *rest):
    """A GRU / RNN layer that the CPU engine runs in bfloat16 itself (bfloat16 brgemm on this
    CPU, H even, T >= 4): the forward rounds h to bfloat16 every step, as torch's bf16 layers
    do; sums, biases and what backward reads stay float32. Elsewhere bfloat16 computes in
    float32 (fastseq/ops/_cpu_bfloat16.py), as under torch.compile (the custom ops, traced
    with fake tensors that the C++ predicate cannot read)."""
    return not use_custom_op(input) and _C.recurrent_engine_runs_bfloat16(input, hx.shape[-1])
