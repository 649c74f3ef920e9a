"""How fastseq's layers meet torch's tools that cannot see into fused kernels: one place
that says when a layer must run torch's own forward, and the glue that lets TorchScript,
torch.ao dynamic quantization and ``torch.load(weights_only=True)`` treat a fastseq class
as the torch class it subclasses.

* ``use_torch_forward()``: True under ONNX export (``torch.onnx.export``, both the
  TorchScript-based ``dynamo=False`` exporter and ``dynamo=True``), under ``torch.jit.trace``
  and under a torch.func transform (grad, jacrev, jacfwd, vmap, ...). The fused kernels are
  C++ calls that the tracers record as constants (a graph with no inputs) or that functorch
  cannot wrap (autograd.Functions without setup_context, raw data pointers), while torch's
  own forward exports as ONNX LSTM / GRU / RNN / attention and composes with torch.func.
  Plain ``torch.export`` and ``torch.compile`` keep the fused custom ops (they trace them).
* ``TorchTwin``: a mixin whose ``__prepare_scriptable__`` hands ``torch.jit.script`` the
  torch module with the same parameters (see ``torch_twin``).
* ``register(classes)``: allowlists the classes for weights_only loading and registers them
  with torch.ao's dynamic quantization (see the functions below for why each is sound).
"""
from importlib import import_module

import torch

__all__ = ["use_torch_forward", "torch_base", "torch_twin", "TorchTwin", "register"]


def use_torch_forward() -> bool:
    """True when a fastseq layer must run torch's own forward instead of the fused kernels.

    Costs ~0.5 us in eager mode (three C flags), cheap enough for LSTMCell's per-step path.
    """
    if torch.compiler.is_compiling():
        # Dynamo or torch.export is tracing: the custom ops trace fine and stay, except
        # when the traced graph is headed for ONNX (torch.onnx.export(dynamo=True) runs
        # torch.export), whose translator knows aten's ops and not fastseq's. torch.onnx is
        # looked at only when exporting, so plain torch.compile never traces into it.
        return torch.compiler.is_exporting() and torch.onnx.is_in_onnx_export()
    # torch.onnx.export(dynamo=False) runs under the TorchScript tracer, so _is_tracing
    # covers it as well as torch.jit.trace; a non-empty functorch interpreter stack means a
    # torch.func transform is active around this call.
    return torch._C._is_tracing() or torch._C._functorch.peek_interpreter_stack() is not None


def torch_base(cls: type) -> type:
    """The torch.nn class a fastseq class stands in for: the first class in its MRO that
    torch defines (fastseq.nn.LSTM -> torch.nn.LSTM)."""
    for base in cls.__mro__:
        if base.__module__.startswith("torch."):
            return base
    raise TypeError(f"{cls.__name__} does not derive from a torch.nn module")


def torch_twin(module: torch.nn.Module) -> torch.nn.Module:
    """A torch_base(type(module)) instance sharing module's parameters, buffers and
    submodules (the same objects: training one trains the other), with containers of its
    own so that replacing an entry in one leaves the other as it was. fastseq's classes add
    no state to torch's, so the twin is a complete torch module."""
    cls = torch_base(type(module))
    twin = cls.__new__(cls)
    state = dict(module.__dict__)
    for key in ("_parameters", "_buffers", "_modules"):
        state[key] = dict(state[key])
    if "_flat_weights" in state:  # RNNBase's list of the parameters, kept in step by __setattr__
        state["_flat_weights"] = list(state["_flat_weights"])
    twin.__dict__.update(state)
    return twin


class TorchTwin:
    """Mixin for fastseq's layers: ``torch.jit.script`` compiles the torch twin.

    torch.jit.script calls ``__prepare_scriptable__`` on every module it is given or finds
    inside one, and scripts what it returns; the twin's forward is torch's, which TorchScript
    supports, so the scripted (and frozen) model computes what the eager one does. torch
    writes the returned module back into the parent's ``_modules``: after
    ``torch.jit.script(model)`` the eager ``model`` holds the torch twins (same parameters,
    same results, torch's speed). Script a ``copy.deepcopy(model)`` to keep the fused layers.
    """

    def __prepare_scriptable__(self):
        return torch_twin(self)


# ---- torch.ao dynamic quantization ----------------------------------------------------


class _QuantizeTwin:
    """A mapping entry for torch.ao's convert: quantizes a fastseq module by handing its torch
    twin to the quantized class's from_float, which accepts torch's exact classes only.
    The result is torch's own dynamic quantized module (e.g. torch.ao.nn.quantized.dynamic.LSTM)."""

    def __init__(self, quantized_cls: type):
        self.quantized_cls = quantized_cls

    def from_float(self, mod, use_precomputed_fake_quant: bool = False):
        return self.quantized_cls.from_float(
            torch_twin(mod), use_precomputed_fake_quant=use_precomputed_fake_quant)

    def __repr__(self):
        return f"_QuantizeTwin({self.quantized_cls.__module__}.{self.quantized_cls.__qualname__})"


_QUANTIZABLE: list = []   # fastseq classes whose torch base torch.ao quantizes dynamically


def _propagate_qconfig_for_twins(original):
    """Wraps torch.ao.quantization.quantize.propagate_qconfig_ (which quantize_dynamic and
    prepare call) so that a qconfig given for a torch class also applies to its fastseq
    class. torch matches qconfig_spec keys by exact type, so `quantize_dynamic(model,
    {nn.LSTM, nn.Linear})` (and the default spec, written with torch's classes) would
    otherwise leave fastseq's layers float without a word. A key naming the fastseq class
    itself wins; user subclasses of torch classes keep torch's exact-type matching."""

    def propagate_qconfig_(module, qconfig_dict=None, prepare_custom_config_dict=None):
        if qconfig_dict:
            extra = {cls: qconfig_dict[torch_base(cls)] for cls in _QUANTIZABLE
                     if cls not in qconfig_dict and torch_base(cls) in qconfig_dict}
            if extra:
                qconfig_dict = {**qconfig_dict, **extra}
        return original(module, qconfig_dict, prepare_custom_config_dict)

    propagate_qconfig_.__wrapped__ = original
    propagate_qconfig_._fastseq_twins = True
    return propagate_qconfig_


def _register_dynamic_quantization(classes) -> None:
    # import_module: `from torch.ao.quantization import quantize` gives the function
    # torch.ao.quantization.quantize, not the module that defines quantize_dynamic.
    quantization_mappings = import_module("torch.ao.quantization.quantization_mappings")
    quantize = import_module("torch.ao.quantization.quantize")

    mappings = quantization_mappings.DEFAULT_DYNAMIC_QUANT_MODULE_MAPPINGS
    for cls in classes:
        quantized = mappings.get(torch_base(cls))
        if quantized is not None and cls not in mappings:  # nn.RNN has none in torch either
            mappings[cls] = _QuantizeTwin(quantized)
            _QUANTIZABLE.append(cls)
    if not getattr(quantize.propagate_qconfig_, "_fastseq_twins", False):
        quantize.propagate_qconfig_ = _propagate_qconfig_for_twins(quantize.propagate_qconfig_)


def register(classes) -> None:
    """Makes torch's tools treat each fastseq class as its torch base class.

    weights_only loading: the classes are allowlisted for ``torch.load(weights_only=True)``.
    This is safe: allowlisting lets the unpickler create an instance and set its ``__dict__``
    (Module.__setstate__ / RNNBase.__setstate__, torch's code), and fastseq's classes define
    no pickling hooks or state of their own, so what a file can make them do is what it can
    make torch.nn.LSTM & co. do. Every other global in the file (the user's model class,
    torch.nn.Linear, ...) still has to be allowlisted, as it would for a torch model.
    """
    torch.serialization.add_safe_globals(list(classes))
    _register_dynamic_quantization(classes)
