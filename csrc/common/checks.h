// Input checks shared by every op: each failure names the argument, what was expected
// and what arrived, so a user's mistake reads as a sentence rather than a crash.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <initializer_list>
#include <sstream>
#include <string>

namespace fastseq {

inline std::string shape_str(at::IntArrayRef sizes) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < sizes.size(); ++i) out << (i ? ", " : "") << sizes[i];
  out << "]";
  return out.str();
}

// Expected sizes use -1 as "any", so one call states a whole shape contract.
inline void check_shape(const at::Tensor& t, const char* op, const char* name,
                        std::initializer_list<int64_t> expected) {
  bool ok = t.dim() == static_cast<int64_t>(expected.size());
  if (ok) {
    int64_t d = 0;
    for (int64_t e : expected) {
      if (e >= 0 && t.size(d) != e) { ok = false; break; }
      ++d;
    }
  }
  if (!ok) {
    std::ostringstream want;
    want << "[";
    size_t i = 0;
    for (int64_t e : expected) {
      want << (i++ ? ", " : "");
      if (e >= 0) want << e; else want << "*";
    }
    want << "]";
    TORCH_CHECK(false, op, ": ", name, " must have shape ", want.str(), ", got ",
                shape_str(t.sizes()));
  }
}

inline void check_dim(const at::Tensor& t, const char* op, const char* name, int64_t dim) {
  TORCH_CHECK(t.dim() == dim, op, ": ", name, " must be ", dim, "-D, got ", t.dim(),
              "-D with shape ", shape_str(t.sizes()));
}

inline void check_floating(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name,
              " must be a floating-point tensor, got ", t.scalar_type());
}

inline void check_same_dtype(const at::Tensor& t, const at::Tensor& ref, const char* op,
                             const char* name, const char* ref_name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " must have the dtype of ",
              ref_name, " (", ref.scalar_type(), "), got ", t.scalar_type());
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* op,
                              const char* name, const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " must be on the device of ",
              ref_name, " (", ref.device(), "), got ", t.device());
}

// A CUDA tensor reaching a CPU-only build must say how to get a CUDA build, not
// fall through to a CPU kernel reading device memory.
inline void check_device_supported(const at::Tensor& t, const char* op, const char* name) {
#ifndef FASTSEQ_WITH_CUDA
  TORCH_CHECK(!t.is_cuda(), op, ": ", name, " is on ", t.device(),
              " but fastseq was built without CUDA; rebuild with CUDA: on a machine with nvcc "
              "and a CUDA-enabled torch run `FASTSEQ_CUDA=1 pip install --no-build-isolation -e .`");
#endif
  TORCH_CHECK(t.is_cpu() || t.is_cuda(), op, ": ", name, " is on ", t.device(),
              "; fastseq supports cpu and cuda tensors");
}

}  // namespace fastseq
