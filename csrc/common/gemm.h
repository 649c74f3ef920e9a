// GEMMs for the fused ops, picking the fastest full-precision library path torch ships, by
// the CPU it runs on: on AMD CPUs, oneDNN's JIT GEMM (through torch's
// mkldnn::_linear_pointwise op) runs float32 ~2x faster than MKL's sgemm (MKL takes a
// generic path there); on Intel CPUs MKL (ATen's mm) measured faster than oneDNN at every
// recurrent-layer shape (M 1-2048, K 128-512, N 512-2048; Xeon with AVX-512, 1 thread).
// Elsewhere (CUDA -> cuBLAS, float64 / bfloat16, tiny shapes) ATen's own addmm/mm.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>

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

// True when linear_nt can use oneDNN for CPU float32 (torch was built with it).
bool onednn_gemm_available();

// The library for large CPU float32 GEMMs: "auto" (oneDNN on AMD CPUs, ATen/MKL elsewhere),
// "onednn" or "aten". cpu_gemm_backend() names the one in use ("onednn" or "aten").
void set_cpu_gemm_backend(const std::string& name);
std::string cpu_gemm_backend();

}  // namespace fastseq
