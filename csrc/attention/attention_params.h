// The one description of a fused-attention problem, shared by the CPU kernels and the
// framework-free CUDA kernels: plain pointers, sizes and strides (no torch types, so nvcc
// compiles it alone). attention.cpp builds it from the tensors (make_params, once per call).
#pragma once

#include <stdint.h>

#include "common/host_device.h"

namespace fastseq {
namespace attn {

enum class Dtype : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };
enum class MaskKind : int { kNone = 0, kBool = 1, kAdditive = 2 };

// Where the rows of a [B, H, L, D] tensor with unit stride along D start: the output and its
// gradient are read and written through this, so the output can be laid out [B, L, H, D] as
// torch's CPU flash attention does (a model's y.transpose(1, 2).reshape(B, L, H * D) is then
// a view, and the gradient arriving through it is read in place).
struct RowLayout {
  int64_t sb, sh, sl;
  FASTSEQ_HOST_DEVICE int64_t at(int64_t b, int64_t h, int64_t i) const { return b * sb + h * sh + i * sl; }
};

// Shapes as in attention.h: q [B, Hq, L, E], k [B, Hk, S, E], v [B, Hk, S, Ev] (unit stride
// along the last dim, row strides covering a row), mask [B, Hq, L, S] with any strides (0 on
// broadcast dims): additive in the inputs' dtype or bool as bytes. Elements are `dtype`.
struct Params {
  Dtype dtype;
  const void* q;
  const void* k;
  const void* v;
  const void* mask;  // null with MaskKind::kNone
  MaskKind mask_kind;
  int64_t B, Hq, Hk, L, S, E, Ev, group;  // group = Hq / Hk query heads per key head
  int64_t q_sb, q_sh, q_sl, k_sb, k_sh, k_ss, v_sb, v_sh, v_ss;
  int64_t m_sb, m_sh, m_sl, m_ss;
  RowLayout out_rows;       // out [B, Hq, L, Ev]: written by a forward, read by a backward
  RowLayout grad_out_rows;  // grad_out [B, Hq, L, Ev] (backward only)
  double scale;       // a kernel rounds it once to its accumulation type
  bool causal;        // key j is seen by row i iff j <= i (torch's top-left tril)
  float dropout_p;    // the dropout hash compares in float on CPU and GPU alike
  double keep_scale;  // 1 / (1 - dropout_p), 1 without dropout
  uint64_t seed;

  // The dropout hash's row index of (batch, query head, query row): the flat output row.
  FASTSEQ_HOST_DEVICE uint32_t dropout_row(int64_t b, int64_t h, int64_t i) const {
    return static_cast<uint32_t>((b * Hq + h) * L + i);
  }
};

// Where a forward writes: out [B, Hq, L, Ev] in dtype, rows at Params::out_rows; lse
// [B, Hq, L] in the accumulation type (float64 for float64, float32 otherwise); weights
// [B, Hq, L, S] contiguous in dtype (with weights_averaged [B, L, S]), or null (no weights
// output).
struct ForwardOutputs {
  void* out;
  void* lse;
  void* weights;
  bool weights_averaged;  // weights [B, L, S]: the mean over the Hq heads (CPU, float32 only)
};

// What a backward reads and writes: grad_out and out [B, Hq, L, Ev] with rows at
// Params::grad_out_rows and out_rows; the rest contiguous: lse as the forward left it;
// weights and grad_weights [B, Hq, L, S] (both or neither); dq, dk, dv in the shapes of q,
// k, v; dmask [B, Hq, L, S] in the accumulation type, zero-filled, or null (no mask gradient).
struct BackwardBuffers {
  const void* grad_out;
  const void* out;
  const void* lse;
  const void* weights;
  const void* grad_weights;
  void* dq;
  void* dk;
  void* dv;
  void* dmask;
};

}  // namespace attn
}  // namespace fastseq
