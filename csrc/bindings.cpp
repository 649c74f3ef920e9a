// The one pybind11 module, fastseq._C: the whole C++ surface in one place. This is the
// only file that includes torch/extension.h (it alone costs ~40 s to compile).
#include <torch/extension.h>

#include "common/build_info.h"

// ---- lstm declarations ----

// ---- gru / rnn declarations ----

// ---- attention declarations ----
#include "attention/attention.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastseq fused kernels (see fastseq.ops for the autograd-aware wrappers)";
  m.def("built_with_cuda", &fastseq::built_with_cuda,
        "True when the CUDA kernels were compiled into this module");
  m.attr("compiler") = py::str(
#if defined(__clang__)
      "clang " __clang_version__
#elif defined(__GNUC__)
      "gcc " __VERSION__
#else
      "unknown"
#endif
  );

  // ---- lstm bindings ----

  // ---- gru / rnn bindings ----

  // ---- attention bindings ----
  m.def("attention_forward", &fastseq::attention_forward, "fused scaled-dot-product attention forward",
        py::arg("query"), py::arg("key"), py::arg("value"), py::arg("attn_mask"),
        py::arg("dropout_p"), py::arg("is_causal"), py::arg("scale"), py::arg("seed"),
        py::arg("return_weights"));
  m.def("attention_backward", &fastseq::attention_backward, "fused scaled-dot-product attention backward",
        py::arg("grad_out"), py::arg("grad_weights"), py::arg("weights"), py::arg("query"),
        py::arg("key"), py::arg("value"), py::arg("out"), py::arg("lse"), py::arg("attn_mask"),
        py::arg("dropout_p"), py::arg("is_causal"), py::arg("scale"), py::arg("seed"),
        py::arg("mask_grad"));
}
