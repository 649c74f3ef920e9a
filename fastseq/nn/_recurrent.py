"""Shared driver for the drop-in recurrent layers (LSTM, GRU, RNN): every piece of work that
torch.nn.RNNBase.forward does around the per-layer recurrence, written once.

Protocol
--------
``run_recurrent_stack(module, input, hx, layer_fn) -> (output, hidden)``

* ``module``: a ``torch.nn.RNNBase`` subclass instance. The driver reads ``mode``
  ("LSTM", "GRU", "RNN_TANH", "RNN_RELU"), ``input_size``, ``hidden_size``, ``num_layers``,
  ``bidirectional``, ``batch_first``, ``dropout``, ``proj_size``, ``training`` and the
  parameters ``weight_ih_l{k}{_reverse}``, ``weight_hh_l{k}{_reverse}``,
  ``bias_ih_l{k}{_reverse}``, ``bias_hh_l{k}{_reverse}`` (absent when ``bias=False``) and
  ``weight_hr_l{k}{_reverse}`` (LSTM with ``proj_size > 0`` only).
* ``input``: a tensor ``[T, B, I]`` (``[B, T, I]`` if batch_first), an unbatched ``[T, I]``,
  or a ``PackedSequence``.
* ``hx``: None (zeros), a tensor (GRU/RNN: ``[L*D, B, H]``) or a tuple of tensors
  (LSTM: ``(h0 [L*D, B, P], c0 [L*D, B, H])`` with ``P = proj_size or hidden_size``);
  unbatched input takes the same without the ``B`` dimension.
* ``layer_fn(x, state, weights, batch_sizes, reverse) -> (out, new_state)`` runs ONE layer in
  ONE direction over the whole sequence:
    - ``x``: ``[T, B, I_layer]`` time-major; with ``batch_sizes`` given, rows are in the
      PackedSequence's sorted order and rows ``>= batch_sizes[t]`` of ``x[t]`` are padding.
    - ``state``: tuple of ``[B, *]`` tensors: LSTM ``(h [B, P], c [B, H])``, GRU/RNN ``(h [B, H],)``.
    - ``weights``: ``(w_ih, w_hh, b_ih or None, b_hh or None)`` plus, for LSTM only, a fifth
      entry ``w_hr or None``.
    - ``batch_sizes``: None for full-length sequences, else an int64 CPU tensor ``[T]``,
      non-increasing (PackedSequence semantics): at step t only rows ``< batch_sizes[t]``
      are active; inactive rows keep their state and get output 0.
    - ``reverse``: process t = T-1 .. 0 (the backward direction of a bidirectional layer).
    - returns ``out [T, B, D]`` (D = P for LSTM, H otherwise; zero where inactive) and the
      final state tuple (for variable lengths: each row's state after its last active step).
  ``layer_fn`` must be differentiable (autograd) in everything it receives.

The driver does the validation (with torch's conditions and messages that name the argument,
the expected and the actual value), unbatched input, batch_first, PackedSequence in and out
(hx permuted by sorted_indices and the final state back by unsorted_indices, as torch does),
default zero states, the layer x direction loop, inter-layer dropout in training (torch's
semantics: ``F.dropout`` on each layer's output but the last; the random draws differ from
torch's), and the stacking of final states into torch's ``(num_layers * num_directions, B, *)``.
"""
import importlib.abc
import importlib.util
import sys
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from .._ext import require_cuda_build
from ._interop import use_torch_forward

# Dynamo refuses to trace any instance of torch.nn.RNN/GRU/LSTM (their forward calls _VF
# kernels it cannot see into) unless torch._dynamo.config.allow_rnn is set. fastseq's
# subclasses are plain Python down to the custom ops, so they trace. The switch is global
# (it also lets Dynamo try torch's own RNN modules instead of breaking the graph there), and
# is set when Dynamo's config loads: importing torch._dynamo here would add ~1.4 s to
# `import fastseq`.
def _allow_rnn_in_dynamo():
    config = sys.modules.get("torch._dynamo.config")
    if config is not None:
        config.allow_rnn = True
        return

    class _SetAllowRnnOnImport(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "torch._dynamo.config":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            exec_module = spec.loader.exec_module

            def exec_and_allow(module):
                exec_module(module)
                module.allow_rnn = True
            spec.loader.exec_module = exec_and_allow
            return spec

    sys.meta_path.insert(0, _SetAllowRnnOnImport())


_allow_rnn_in_dynamo()


CPU_FUSED_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def fused_dtype(t: Tensor) -> bool:
    """dtypes the fused kernels cover: float32/float64/bfloat16 on CPU; on CUDA float16 too."""
    if t.dtype in CPU_FUSED_DTYPES:
        return True
    return t.dtype == torch.float16 and t.device.type == "cuda"


def cell_weights(cell):
    """(weight_ih, weight_hh, bias_ih, bias_hh) of a cell, from its _parameters dict: four
    dict reads instead of four nn.Module.__getattr__ calls (~2 us of a ~20 us decoder step).
    Weights moved out of _parameters (torch.nn.utils.parametrize, weight_norm) are read as
    attributes, as torch's own cell reads them."""
    p = cell._parameters
    try:
        return p["weight_ih"], p["weight_hh"], p["bias_ih"], p["bias_hh"]
    except KeyError:
        return cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh


def torch_fallback(module, input) -> bool:
    """True for a dtype the kernels lack (float16 on CPU) and under export, tracing and
    torch.func transforms (fastseq.nn._interop): torch's own forward runs it."""
    if use_torch_forward():
        return True
    data = input.data if isinstance(input, torch.nn.utils.rnn.PackedSequence) else input
    if not isinstance(data, Tensor):
        return False
    require_cuda_build(data.device)
    return data.is_floating_point() and data.dtype == module.weight_ih_l0.dtype and not fused_dtype(data)



LayerFn = Callable[[Tensor, Tuple[Tensor, ...], tuple, Optional[Tensor], bool],
                   Tuple[Tensor, Tuple[Tensor, ...]]]


def _name(module) -> str:
    return type(module).__name__


def _state_sizes(module) -> Sequence[int]:
    """Last dimension of each state tensor: LSTM (h, c), GRU/RNN (h,)."""
    if module.mode == "LSTM":
        return (module.proj_size if module.proj_size > 0 else module.hidden_size, module.hidden_size)
    return (module.hidden_size,)


def layer_weights(module, layer: int, reverse: bool) -> tuple:
    """(w_ih, w_hh, b_ih|None, b_hh|None[, w_hr|None]) of one layer and direction."""
    sfx = f"_l{layer}" + ("_reverse" if reverse else "")
    w = [getattr(module, "weight_ih" + sfx), getattr(module, "weight_hh" + sfx),
         getattr(module, "bias_ih" + sfx, None) if module.bias else None,
         getattr(module, "bias_hh" + sfx, None) if module.bias else None]
    if module.mode == "LSTM":
        w.append(getattr(module, "weight_hr" + sfx) if module.proj_size > 0 else None)
    return tuple(w)


def _check_input(module, data: Tensor, packed: bool) -> None:
    name = _name(module)
    if not torch.is_floating_point(data):
        raise ValueError(f"{name}: input must be a floating-point tensor, got dtype {data.dtype}")
    w = module.weight_ih_l0
    if data.dtype != w.dtype and not torch._C._is_any_autocast_enabled():
        raise ValueError(
            f"{name}: input dtype ({data.dtype}) does not match weight dtype ({w.dtype}). "
            f"Convert input: input.to({w.dtype}), or convert model: model.to({data.dtype})")
    if data.device != w.device:
        raise RuntimeError(f"{name}: input is on {data.device} but the weights are on {w.device}; "
                           f"move one of them: input.to({str(w.device)!r}) or model.to({str(data.device)!r})")
    if data.size(-1) != module.input_size:
        raise RuntimeError(f"{name}: input.size(-1) must be equal to input_size. "
                           f"Expected {module.input_size}, got {data.size(-1)} (input shape {list(data.shape)})")
    if not packed and data.size(0 if not module.batch_first or data.dim() == 2 else 1) == 0:
        raise RuntimeError(f"{name}: expected sequence length to be larger than 0, "
                           f"got input of shape {list(data.shape)}")


def _check_hx(module, hx: Tuple[Tensor, ...], data: Tensor, batch: int) -> None:
    name = _name(module)
    num_dirs = 2 if module.bidirectional else 1
    labels = ("hx", "cx") if module.mode == "LSTM" else ("hx",)
    for i, (h, size, label) in enumerate(zip(hx, _state_sizes(module), labels)):
        expected = [module.num_layers * num_dirs, batch, size]
        if list(h.shape) != expected:
            what = f"hidden[{i}]" if module.mode == "LSTM" else "hidden"
            raise RuntimeError(f"{name}: Expected {what} ({label}) size {tuple(expected)}, got {list(h.shape)}")
        if h.dtype != data.dtype:
            raise ValueError(f"{name}: {label} dtype ({h.dtype}) must match the input dtype ({data.dtype})")
        if h.device != data.device:
            raise RuntimeError(f"{name}: {label} is on {h.device} but the input is on {data.device}")


def _normalise_hx(module, hx, batched: bool) -> Optional[Tuple[Tensor, ...]]:
    """hx as a tuple of batched tensors (or None), checking arity and rank as torch does."""
    if hx is None:
        return None
    name = _name(module)
    if module.mode == "LSTM":
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError(f"{name}: hx must be a tuple (h_0, c_0) of tensors, got {type(hx).__name__}"
                            + (f" of length {len(hx)}" if isinstance(hx, (tuple, list)) else ""))
        hx = tuple(hx)
    else:
        if isinstance(hx, (tuple, list)):
            if len(hx) != 1:
                raise TypeError(f"{name}: hx must be a tensor h_0, got a sequence of length {len(hx)}")
            hx = tuple(hx)
        else:
            hx = (hx,)
    for h in hx:
        if not isinstance(h, Tensor):
            raise TypeError(f"{name}: hx must contain tensors, got {type(h).__name__}")
    want = 3 if batched else 2
    if any(h.dim() != want for h in hx):
        dims = ", ".join(f"{h.dim()}-D" for h in hx)
        kind = "batched 3-D" if batched else "unbatched 2-D"
        states = "hx and cx" if module.mode == "LSTM" else "hx"
        raise RuntimeError(f"{name}: For {kind} input, {states} should also be {want}-D but got ({dims}) tensors")
    if not batched:
        hx = tuple(h.unsqueeze(1) for h in hx)
    return hx


def _pad_packed(data: Tensor, batch_sizes: Tensor) -> Tuple[Tensor, Tensor]:
    """Packed data [N, I] -> time-major padded [T, B, I] (zeros where inactive) and the flat
    indices (t * B + b) of the active positions, to pack the output back."""
    T, B = batch_sizes.numel(), int(batch_sizes[0])
    active = torch.arange(B).unsqueeze(0) < batch_sizes.unsqueeze(1)          # [T, B], CPU
    index = active.reshape(-1).nonzero().squeeze(1).to(data.device)
    padded = data.new_zeros(T * B, data.size(1)).index_copy(0, index, data)
    return padded.view(T, B, data.size(1)), index


def run_recurrent_stack(module, input, hx, layer_fn: LayerFn):
    """Run ``module``'s whole stack with ``layer_fn`` doing each layer/direction; returns
    exactly what the torch module's forward returns (see the file header)."""
    name = _name(module)
    packed = isinstance(input, PackedSequence)
    num_dirs = 2 if module.bidirectional else 1
    batch_sizes = None
    if packed:
        data, batch_sizes, sorted_indices, unsorted_indices = input
        if data.dim() != 2:
            raise RuntimeError(f"{name}: packed input data must be 2-D [N, input_size], got shape {list(data.shape)}")
        _check_input(module, data, packed=True)
        batch = int(batch_sizes[0])
        hx = _normalise_hx(module, hx, batched=True)
        if hx is not None:
            _check_hx(module, hx, data, batch)
            if sorted_indices is not None:
                hx = tuple(h.index_select(1, sorted_indices) for h in hx)
        x, pack_index = _pad_packed(data, batch_sizes)
        batched = True
    else:
        if not isinstance(input, Tensor):
            raise TypeError(f"{name}: input must be a Tensor or a PackedSequence, got {type(input).__name__}")
        if input.dim() not in (2, 3):
            raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead "
                             f"(input shape {list(input.shape)})")
        _check_input(module, input, packed=False)
        batched = input.dim() == 3
        x = input if batched else input.unsqueeze(1)
        if module.batch_first and batched:
            x = x.transpose(0, 1)
        batch = x.size(1)
        hx = _normalise_hx(module, hx, batched)
        if hx is not None:
            _check_hx(module, hx, x, batch)

    if hx is None:
        hx = tuple(x.new_zeros(module.num_layers * num_dirs, batch, s) for s in _state_sizes(module))

    finals = [[] for _ in hx]
    for layer in range(module.num_layers):
        if layer > 0 and module.dropout > 0 and module.training:
            x = F.dropout(x, module.dropout, training=True)
        outs = []
        for direction in range(num_dirs):
            k = layer * num_dirs + direction
            state = tuple(h[k] for h in hx)
            out, new_state = layer_fn(x, state, layer_weights(module, layer, direction == 1),
                                      batch_sizes, direction == 1)
            outs.append(out)
            for acc, s in zip(finals, new_state):
                acc.append(s)
        x = outs[0] if num_dirs == 1 else torch.cat(outs, dim=2)
    hidden = tuple(torch.stack(acc, 0) for acc in finals)

    if packed:
        out_data = x.reshape(-1, x.size(2)).index_select(0, pack_index)
        output = PackedSequence(out_data, batch_sizes, sorted_indices, unsorted_indices)
        if unsorted_indices is not None:
            hidden = tuple(h.index_select(1, unsorted_indices) for h in hidden)
    else:
        output = x
        if module.batch_first and batched:
            output = output.transpose(0, 1)
        if not batched:
            output = output.squeeze(1)
            hidden = tuple(h.squeeze(1) for h in hidden)
    return output, (hidden if module.mode == "LSTM" else hidden[0])
