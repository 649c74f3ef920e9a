"""bfloat16 recurrent layers on CPU compute in float32 (one exception below): the decorated layer op gets its
floating tensors (input, states, weights) cast to float32, runs the float32 sequence
engine (csrc/recurrent/), and returns bfloat16. The casts are ordinary autograd ops, so
gradients come back in bfloat16 too. Why: the float32 engine runs a bf16 layer 2-20x
faster than the per-step bf16 loop (and than torch's own bf16 LSTM/GRU on CPUs without
AMX), and keeps the cell state and every sum in float32, so its error against a float64
reference is that of rounding the inputs and outputs only (docs/numerics.md).

The exception: LSTM (without projection), GRU and RNN layers where the CPU engine runs
bfloat16 natively on oneDNN's bfloat16 micro-kernels (AMX / AVX512-BF16:
`_C.recurrent_engine_runs_bfloat16`), 3-4x faster than float32 there; the forward rounds h
to bfloat16 every step, as torch's bf16 layers do, and keeps the cell state and the sums in
float32. In training it saves what backward reads (LSTM gates and cell states, GRU r, z, n,
W_hn h + b_hn) in float32; backward runs the pointwise backward in float32, dG W_hh as
bfloat16 brgemms into float32, and the GEMMs over all steps (dx, dW_ih, dW_hh) in bfloat16."""
import functools

import torch

from ._autocast import _cast  # floating tensors (also in tuples) to a dtype


def bfloat16_in_float32_on_cpu(fn=None, *, native=None):
    """Decorator for a layer op fn(x, ...): float32 compute when x is a CPU bfloat16 tensor,
    unless native(x, *args) says the op runs this call in bfloat16 itself."""
    if fn is None:
        return functools.partial(bfloat16_in_float32_on_cpu, native=native)

    @functools.wraps(fn)
    def run(x, *args, **kwargs):
        if x.dtype is not torch.bfloat16 or x.device.type != "cpu":
            return fn(x, *args, **kwargs)
        if native is not None and native(x, *args):
            return fn(x, *args, **kwargs)
        result = fn(_cast(x, torch.float32), *_cast(args, torch.float32), **_cast(kwargs, torch.float32))
        return _cast(result, torch.bfloat16)
    return run
