// The one pybind11 module, fastseq._C: the whole C++ surface in one place. This is the
// only file that includes torch/extension.h (it alone costs ~40 s to compile).
#include <torch/extension.h>

#include "common/build_info.h"

// ---- lstm declarations ----

// ---- gru / rnn declarations ----

// ---- attention declarations ----

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
}
