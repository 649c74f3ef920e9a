"""Drop-in fused LSTM and LSTMCell: subclasses of the torch modules (same constructor,
parameters, initialisation and state_dict) whose forward runs fastseq's fused kernels."""
import torch
from torch import Tensor

from .._ext import require_cuda_build
from ..ops.lstm import lstm_cell, lstm_layer
from ._interop import TorchTwin, use_torch_forward
from ._recurrent import CPU_FUSED_DTYPES, cell_weights, fused_dtype, run_recurrent_stack, torch_fallback

class LSTM(TorchTwin, torch.nn.LSTM):
    """torch.nn.LSTM with a fused forward and backward through time.

    Every torch.nn.LSTM feature is supported: batched / unbatched input, given or default
    (h_0, c_0), PackedSequence in and out, bidirectional, num_layers, proj_size,
    batch_first, bias=False and inter-layer dropout. Dropout follows torch's semantics (a
    dropout mask on each layer's output but the last, in training) but draws its random
    numbers differently, so with dropout > 0 in training the masks differ from torch's
    for the same seed.

    Runs torch.nn.LSTM's own forward (not fused) for a dtype the kernels lack (float16 on
    CPU), and wherever torch's tools cannot see into the fused kernels (see
    fastseq.nn._interop and docs/interop.md): under ONNX export, where torch's forward
    exports as the ONNX LSTM op; under torch.jit.trace; and under torch.func transforms
    (grad, jacrev, vmap, ...). torch.jit.script scripts the equivalent torch.nn.LSTM (same
    parameters); torch.ao.quantization.quantize_dynamic turns it into torch's dynamic
    quantized LSTM, as it does torch.nn.LSTM.
    """

    def forward(self, input, hx=None):
        if torch_fallback(self, input):
            return super().forward(input, hx)
        return run_recurrent_stack(self, input, hx, lstm_layer)


class LSTMCell(TorchTwin, torch.nn.LSTMCell):
    """torch.nn.LSTMCell with one fused step (two GEMMs and one pointwise pass) and a
    low-overhead eager path for decoder loops.

    Runs torch.nn.LSTMCell's own forward for float16 on CPU and, as fastseq.nn.LSTM, under
    ONNX export, torch.jit.trace and torch.func transforms; scripts and quantizes (dynamic)
    as torch.nn.LSTMCell.
    """

    def forward(self, input: Tensor, hx=None):
        if use_torch_forward():
            return super().forward(input, hx)
        # This runs once per decoder step: the common case (batched, matching dtype and
        # device, given (h, c) of the right shape) costs a handful of attribute reads; any
        # miss goes to _prepare_and_run, which reports what is wrong, or normalises the
        # input (unbatched, hx None or a list, other dtypes and devices) and runs it.
        weights = cell_weights(self)
        w_ih = weights[0]
        if (type(input) is Tensor and type(hx) is tuple and len(hx) == 2 and input.dim() == 2
                and input.dtype == w_ih.dtype and input.device == w_ih.device
                and not input.is_cuda and input.dtype in CPU_FUSED_DTYPES
                and input.shape[1] == self.input_size):
            h0, c0 = hx
            size = (input.shape[0], self.hidden_size)
            if (type(h0) is Tensor and type(c0) is Tensor and h0.shape == size and c0.shape == size):
                return lstm_cell(input, h0, c0, *weights)
        return self._prepare_and_run(input, hx)

    def _prepare_and_run(self, input, hx):
        name = type(self).__name__
        if not isinstance(input, Tensor):
            raise TypeError(f"{name}: input must be a Tensor, got {type(input).__name__}")
        dim = input.dim()
        if dim != 2 and dim != 1:
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {dim}D instead "
                             f"(input shape {list(input.shape)})")
        w_ih = self.weight_ih
        if input.dtype != w_ih.dtype:
            if not input.is_floating_point():
                raise ValueError(f"{name}: input must be a floating-point tensor, got dtype {input.dtype}")
            raise ValueError(f"{name}: input dtype ({input.dtype}) does not match weight dtype "
                             f"({w_ih.dtype})")
        if input.is_cuda:
            require_cuda_build(input.device)
        if not fused_dtype(input):
            return super().forward(input, hx)
        if input.device != w_ih.device:
            raise RuntimeError(f"{name}: input is on {input.device} but the weights are on {w_ih.device}")
        if input.shape[-1] != self.input_size:
            raise RuntimeError(f"{name}: input.size(-1) must be equal to input_size. Expected "
                               f"{self.input_size}, got {input.shape[-1]}")
        batched = dim == 2
        if not batched:
            input = input.unsqueeze(0)
        if hx is None:
            zeros = input.new_zeros(input.shape[0], self.hidden_size)
            h0, c0 = zeros, zeros
        else:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"{name}: hx must be a tuple (h_0, c_0) of tensors")
            h0, c0 = hx
            if h0.dim() != dim or c0.dim() != dim:
                raise RuntimeError(f"{name}: Expected hx[0] and hx[1] to be {dim}D for "
                                   f"{'batched' if batched else 'unbatched'} input, got "
                                   f"{h0.dim()}D and {c0.dim()}D")
            if not batched:
                h0, c0 = h0.unsqueeze(0), c0.unsqueeze(0)
            expected = (input.shape[0], self.hidden_size)
            for i, t in enumerate((h0, c0)):
                if t.shape != expected:
                    raise RuntimeError(f"{name}: hx[{i}] must have shape {list(expected)} (batch, "
                                       f"hidden_size), got {list(t.shape)}")
        h, c = lstm_cell(input, h0, c0, w_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        if not batched:
            h, c = h.squeeze(0), c.squeeze(0)
        return h, c
