// Framework-free CUDA kernels of fused scaled-dot-product attention: a plain struct of
// pointers, sizes and strides in, a cudaStream_t, nothing from torch (compiles with nvcc -c).
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

namespace fastseq {
namespace attention_cuda {

enum class Dtype : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };
enum class MaskKind : int { kNone = 0, kBool = 1, kAdditive = 2 };

// Largest head dim (E and Ev) the kernels hold in registers: 8 values per lane of a warp.
constexpr int kMaxHeadDim = 256;

// Shapes as in attention.h: q [B, Hq, L, E], k [B, Hk, S, E], v [B, Hk, S, Ev] with any
// strides (the last dim contiguous), mask [B, Hq, L, S] with any strides (0 = broadcast),
// additive masks in the inputs' dtype, bool masks as bytes.
struct ForwardParams {
  const void* q;
  const void* k;
  const void* v;
  const void* mask;
  MaskKind mask_kind;
  void* out;      // [B, Hq, L, Ev] contiguous, inputs' dtype
  float* lse;     // [B, Hq, L]
  void* weights;  // [B, Hq, L, S] contiguous or null: also write the softmax weights
  int64_t B, Hq, Hk, L, S, E, Ev, group;
  int64_t q_sb, q_sh, q_sl, k_sb, k_sh, k_ss, v_sb, v_sh, v_ss;
  int64_t m_sb, m_sh, m_sl, m_ss;
  float scale;
  bool causal;
  float dropout_p;
  float keep_scale;  // 1 / (1 - dropout_p)
  uint64_t seed;
};

struct BackwardParams {
  ForwardParams fwd;            // the forward's inputs (out, lse and weights read, not written)
  const void* out;              // [B, Hq, L, Ev] contiguous
  const void* grad_out;         // [B, Hq, L, Ev] contiguous
  const void* grad_weights;     // [B, Hq, L, S] contiguous or null
  const void* weights_saved;    // [B, Hq, L, S] contiguous (needed with grad_weights)
  float* d_row;                 // [B, Hq, L] scratch: rowsum(dO * O) (+ rowsum(W * dW))
  void* dq;                     // [B, Hq, L, E] contiguous
  void* dk;                     // [B, Hk, S, E] contiguous
  void* dv;                     // [B, Hk, S, Ev] contiguous
  float* dmask;                 // [B, Hq, L, S] zero-filled, or null
};

// Each returns cudaGetLastError() after its launches.
cudaError_t attention_forward(const ForwardParams& params, Dtype dtype, cudaStream_t stream);
cudaError_t attention_backward(const BackwardParams& params, Dtype dtype, cudaStream_t stream);

}  // namespace attention_cuda
}  // namespace fastseq
