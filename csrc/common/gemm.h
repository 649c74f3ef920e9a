// GEMMs for the fused ops, picking the fastest full-precision library path torch ships:
// on CPU float32, oneDNN's JIT GEMM (through torch's mkldnn::_linear_pointwise op) runs
// ~2x faster than MKL's sgemm on AMD CPUs (MKL takes a generic path there); elsewhere
// (CUDA -> cuBLAS, float64 / bfloat16, tiny shapes) ATen's own addmm/mm.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace fastseq {

// x [M, K] @ w[N, K]^T (+ bias [N]) -> new contiguous [M, N]. w may be a transposed view.
at::Tensor linear_nt(const at::Tensor& x, const at::Tensor& w,
                     const std::optional<at::Tensor>& bias = std::nullopt);

// a [M, K] @ b [K, N] -> new contiguous [M, N].
inline at::Tensor matmul(const at::Tensor& a, const at::Tensor& b) { return linear_nt(a, b.t()); }

// a[K, M]^T @ b[K, N] -> new contiguous [M, N] (weight gradients: sums over K = T*B rows).
// oneDNN is ~2x faster when the wider of the two transposed operands is its "weight", so
// the product is formed as (b^T a)^T when a is the wider one and K is large.
at::Tensor matmul_tn(const at::Tensor& a, const at::Tensor& b);

// True when linear_nt uses oneDNN for CPU float32 (for `fastseq info` and the benchmark notes).
bool onednn_gemm_available();

}  // namespace fastseq
