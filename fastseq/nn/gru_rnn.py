"""Drop-in fused GRU, RNN (tanh / relu), GRUCell and RNNCell: subclasses of the torch modules
(same constructor, parameters, initialisation and state_dict) whose forward runs fastseq's
fused kernels; the stack work (layers, directions, packing, dropout) is the shared driver's."""
import torch
from torch import Tensor

from .._ext import _C, require_cuda_build
from ..ops.gru import gru_cell, gru_layer
from ..ops.rnn import rnn_cell, rnn_layer
from ._interop import TorchTwin, use_torch_forward
from ._recurrent import CPU_FUSED_DTYPES, cell_weights, fused_dtype, run_recurrent_stack, torch_fallback

_NONLINEARITIES = ("tanh", "relu")


class GRU(TorchTwin, torch.nn.GRU):
    """torch.nn.GRU with a fused forward and backward through time.

    Supports everything torch.nn.GRU does: batched / unbatched input, given or default h_0,
    PackedSequence in and out, bidirectional, num_layers, batch_first, bias=False and
    inter-layer dropout (torch's semantics; the random masks differ from torch's for the
    same seed). Runs torch.nn.GRU's own forward for float16 on CPU and wherever torch's tools
    cannot see into the fused kernels (fastseq.nn._interop, docs/interop.md): under ONNX
    export (it exports as the ONNX GRU op), torch.jit.trace and torch.func transforms.
    torch.jit.script scripts the equivalent torch.nn.GRU; quantize_dynamic gives torch's
    dynamic quantized GRU.
    """

    def forward(self, input, hx=None):
        if torch_fallback(self, input):
            return super().forward(input, hx)
        return run_recurrent_stack(self, input, hx, gru_layer)


class RNN(TorchTwin, torch.nn.RNN):
    """torch.nn.RNN (nonlinearity 'tanh' or 'relu') with a fused forward and backward
    through time; same coverage and fallbacks as fastseq.nn.GRU (ONNX export gives the ONNX
    RNN op). quantize_dynamic leaves it float, as it leaves torch.nn.RNN."""

    def forward(self, input, hx=None):
        if self.nonlinearity not in _NONLINEARITIES:
            raise ValueError(f"{type(self).__name__}: nonlinearity must be 'tanh' or 'relu', "
                             f"got {self.nonlinearity!r}")
        if torch_fallback(self, input):
            return super().forward(input, hx)
        return run_recurrent_stack(self, input, hx, rnn_layer(self.nonlinearity))


def _cell_inputs(cell, input, hx):
    """Checks a cell's (input, hx) as torch does and returns them batched, plus whether the
    input was batched (hx None becomes zeros), or None when torch's own forward must run it
    (float16 on CPU). Cheap on purpose: cells run once per step from Python loops."""
    name = type(cell).__name__
    if not isinstance(input, Tensor):
        raise TypeError(f"{name}: input must be a Tensor, got {type(input).__name__}")
    w = cell.weight_ih
    if input.dtype != w.dtype or input.device != w.device or input.dim() not in (1, 2) \
            or input.size(-1) != cell.input_size or not input.is_floating_point():
        _raise_bad_cell_input(cell, input)
    if input.is_cuda and not _C.built_with_cuda():
        require_cuda_build(input.device)
    if input.dtype == torch.float16 and not input.is_cuda:
        return None
    batched = input.dim() == 2
    if not batched:
        input = input.unsqueeze(0)
    if hx is None:
        return input, input.new_zeros(input.size(0), cell.hidden_size), batched
    if not isinstance(hx, Tensor):
        raise TypeError(f"{name}: hx must be a Tensor, got {type(hx).__name__}")
    if hx.dim() != (2 if batched else 1):
        raise RuntimeError(f"{name}: Expected hidden to be {2 if batched else 1}D for "
                           f"{'batched' if batched else 'unbatched'} input, got {hx.dim()}D")
    if not batched:
        hx = hx.unsqueeze(0)
    if hx.shape != (input.size(0), cell.hidden_size):
        raise RuntimeError(f"{name}: hx must have shape {[input.size(0), cell.hidden_size]} "
                           f"(batch, hidden_size), got {list(hx.shape)}")
    if hx.dtype != input.dtype:
        raise ValueError(f"{name}: hx dtype ({hx.dtype}) must match the input dtype ({input.dtype})")
    if hx.device != input.device:
        raise RuntimeError(f"{name}: hx is on {hx.device} but the input is on {input.device}")
    return input, hx, batched


def _fast_cell_call(cell, w, input, hx) -> bool:
    """The common decoder-loop call, checked in a handful of attribute reads (no Python
    helper calls): a batched CPU input and state of the dtype of w (weight_ih) and the cell's
    shapes. Any miss takes _cell_inputs, which reports what is wrong or normalises the call."""
    return (type(input) is Tensor and type(hx) is Tensor and input.dim() == 2
            and input.dtype == w.dtype and input.device == w.device and not input.is_cuda
            and input.dtype in CPU_FUSED_DTYPES and input.shape[1] == cell.input_size
            and hx.dtype == input.dtype and hx.device == input.device
            and hx.shape == (input.shape[0], cell.hidden_size))


def _raise_bad_cell_input(cell, input):
    name, w = type(cell).__name__, cell.weight_ih
    if input.dim() not in (1, 2):
        raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead "
                         f"(input shape {list(input.shape)})")
    if not input.is_floating_point():
        raise ValueError(f"{name}: input must be a floating-point tensor, got dtype {input.dtype}")
    if input.dtype != w.dtype:
        raise ValueError(f"{name}: input dtype ({input.dtype}) does not match weight dtype ({w.dtype})")
    if input.device != w.device:
        raise RuntimeError(f"{name}: input is on {input.device} but the weights are on {w.device}")
    raise RuntimeError(f"{name}: input.size(-1) must be equal to input_size. Expected "
                       f"{cell.input_size}, got {input.size(-1)}")


class GRUCell(TorchTwin, torch.nn.GRUCell):
    """torch.nn.GRUCell with one fused step (two GEMMs and one pointwise pass) and a
    low-overhead eager path for decoder loops. Runs torch's forward for float16 on CPU and,
    as fastseq.nn.GRU, under ONNX export, torch.jit.trace and torch.func transforms; scripts
    and quantizes (dynamic) as torch.nn.GRUCell."""

    def forward(self, input: Tensor, hx=None) -> Tensor:
        if use_torch_forward():
            return super().forward(input, hx)
        weights = cell_weights(self)
        if _fast_cell_call(self, weights[0], input, hx):
            return gru_cell(input, hx, *weights)
        checked = _cell_inputs(self, input, hx)
        if checked is None:
            return super().forward(input, hx)
        input, hx, batched = checked
        h = gru_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return h if batched else h.squeeze(0)


class RNNCell(TorchTwin, torch.nn.RNNCell):
    """torch.nn.RNNCell (tanh or relu) with one fused step; as fastseq.nn.GRUCell (same
    torch-forward fallbacks, scripting and dynamic quantization as torch.nn.RNNCell)."""

    def forward(self, input: Tensor, hx=None) -> Tensor:
        if use_torch_forward():
            return super().forward(input, hx)
        if self.nonlinearity not in _NONLINEARITIES:  # RuntimeError, as torch.nn.RNNCell raises
            raise RuntimeError(f"{type(self).__name__}: nonlinearity must be 'tanh' or 'relu', "
                               f"got {self.nonlinearity!r}")
        weights = cell_weights(self)
        if _fast_cell_call(self, weights[0], input, hx):
            return rnn_cell(input, hx, *weights, self.nonlinearity)
        checked = _cell_inputs(self, input, hx)
        if checked is None:
            return super().forward(input, hx)
        input, hx, batched = checked
        h = rnn_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, self.nonlinearity)
        return h if batched else h.squeeze(0)
