// CUDA fused attention, flash-style: one warp per query row streams the keys 32 at a time
// (one key per lane) with the online softmax of attention_math.h, never materialising L x S;
// the backward recomputes probabilities from the saved log-sum-exp (warp per query row for
// dQ, warp per key row for dK/dV: no atomics, deterministic). Correctness first: these are
// CUDA-core kernels, not tensor-core ones.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "attention/attention_kernels.cuh"
#include "attention/attention_math.h"

namespace fastseq {
namespace attention_cuda {
namespace {

namespace am = attention_math;
using attn::MaskKind;
using attn::Params;

// Kernel arguments (passed by value): the shared problem and where a pass reads and writes.
struct ForwardArgs {
  Params p;
  attn::ForwardOutputs o;
};
struct BackwardArgs {
  Params fwd;
  attn::BackwardBuffers io;
  float* d_row;  // [B, Hq, L] scratch: rowsum(dO * O) (+ rowsum(W * dW))
};

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 4;
constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float warp_max(float x) {
  for (int o = kWarp / 2; o > 0; o /= 2) x = fmaxf(x, __shfl_xor_sync(kFullMask, x, o));
  return x;
}

__device__ __forceinline__ float warp_sum(float x) {
  for (int o = kWarp / 2; o > 0; o /= 2) x += __shfl_xor_sync(kFullMask, x, o);
  return x;
}

// dot(a[0:n] in shared memory, b[0:n] in global memory)
template <typename T>
__device__ __forceinline__ float dot_shared(const float* a, const T* b, int64_t n) {
  float s = 0.f;
  for (int64_t e = 0; e < n; ++e) s += a[e] * to_float(b[e]);
  return s;
}

// Applies attn_mask and the causal cut (key j seen by row i iff j <= i) to one scaled score.
template <typename T>
__device__ __forceinline__ float masked_score(const Params& p, int64_t b, int64_t h,
                                              int64_t i, int64_t j, float s) {
  if (p.causal && j > i) return -INFINITY;
  const int64_t off = b * p.m_sb + h * p.m_sh + i * p.m_sl + j * p.m_ss;
  if (p.mask_kind == MaskKind::kBool)
    return static_cast<const uint8_t*>(p.mask)[off] ? s : -INFINITY;
  if (p.mask_kind == MaskKind::kAdditive) return s + to_float(static_cast<const T*>(p.mask)[off]);
  return s;
}

struct RowIndex {
  int64_t b, h, hk, i;
};

__device__ __forceinline__ RowIndex decode_row(const Params& p, int64_t row) {
  RowIndex r;
  r.i = row % p.L;
  const int64_t bh = row / p.L;
  r.h = bh % p.Hq;
  r.b = bh / p.Hq;
  r.hk = r.h / p.group;
  return r;
}

// ---------------------------------------------------------------------------------------------
// Forward: warp per query row. kPerLane = ceil(Ev / 32) output values held per lane.

template <typename T, int kPerLane>
__global__ void forward_kernel(ForwardArgs args) {
  const Params& p = args.p;
  const float scale = static_cast<float>(p.scale), keep_scale = static_cast<float>(p.keep_scale);
  extern __shared__ float smem[];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp;
  if (row >= p.B * p.Hq * p.L) return;  // whole warps exit together: no block-wide sync below
  const RowIndex r = decode_row(p, row);
  float* q_sh = smem + warp * p.E;
  const T* q_row = static_cast<const T*>(p.q) + r.b * p.q_sb + r.h * p.q_sh + r.i * p.q_sl;
  for (int64_t e = lane; e < p.E; e += kWarp) q_sh[e] = to_float(q_row[e]);
  __syncwarp();
  const T* k_head = static_cast<const T*>(p.k) + r.b * p.k_sb + r.hk * p.k_sh;
  const T* v_head = static_cast<const T*>(p.v) + r.b * p.v_sb + r.hk * p.v_sh;
  const int64_t kv_end = p.causal ? (r.i + 1 < p.S ? r.i + 1 : p.S) : p.S;
  const bool dropout = p.dropout_p > 0.f;
  const uint32_t drow = static_cast<uint32_t>(row);

  float acc[kPerLane];
#pragma unroll
  for (int c = 0; c < kPerLane; ++c) acc[c] = 0.f;
  float m = -INFINITY, l = 0.f;

  auto score = [&](int64_t j) -> float {
    if (j >= kv_end) return -INFINITY;
    const float s = dot_shared(q_sh, k_head + j * p.k_ss, p.E) * scale;
    return masked_score<T>(p, r.b, r.h, r.i, j, s);
  };
  auto accumulate = [&](float pj, int64_t j0) {
    const int64_t n = kv_end - j0 < kWarp ? kv_end - j0 : kWarp;
    for (int t = 0; t < n; ++t) {
      const float pt = __shfl_sync(kFullMask, pj, t);
      const T* v_row = v_head + (j0 + t) * p.v_ss;
#pragma unroll
      for (int c = 0; c < kPerLane; ++c) {
        const int64_t e = lane + c * kWarp;
        if (e < p.Ev) acc[c] += pt * to_float(v_row[e]);
      }
    }
  };

  float inv;
  if (args.o.weights == nullptr) {
    for (int64_t j0 = 0; j0 < kv_end; j0 += kWarp) {
      const int64_t j = j0 + lane;
      const float s = score(j);
      const auto step = am::online_softmax_step(m, warp_max(s));
      float pj = am::fast_exp(s - am::softmax_shift(step.m_new));
      l = l * step.rescale + warp_sum(pj);
      m = step.m_new;
#pragma unroll
      for (int c = 0; c < kPerLane; ++c) acc[c] *= step.rescale;
      if (dropout) pj *= am::dropout_factor<float>(p.seed, drow, static_cast<uint32_t>(j), p.dropout_p, keep_scale);
      accumulate(pj, j0);
    }
    inv = am::inverse_row_sum(l);
  } else {
    // Weights wanted: a first pass for the row's max and sum, a second writing the exact
    // probabilities (they are an output) and accumulating the output with them.
    for (int64_t j0 = 0; j0 < kv_end; j0 += kWarp) {
      const float s = score(j0 + lane);
      const auto step = am::online_softmax_step(m, warp_max(s));
      l = l * step.rescale + warp_sum(am::fast_exp(s - am::softmax_shift(step.m_new)));
      m = step.m_new;
    }
    const float row_inv = am::inverse_row_sum(l);
    T* w_row = static_cast<T*>(args.o.weights) + row * p.S;
    for (int64_t j0 = 0; j0 < p.S; j0 += kWarp) {
      const int64_t j = j0 + lane;
      float pj = am::fast_exp(score(j) - am::softmax_shift(m)) * row_inv;
      if (dropout && j < kv_end) pj *= am::dropout_factor<float>(p.seed, drow, static_cast<uint32_t>(j), p.dropout_p, keep_scale);
      if (j < p.S) w_row[j] = from_float<T>(pj);
      if (j0 < kv_end) accumulate(pj, j0);
    }
    inv = 1.f;
  }
  T* o_row = static_cast<T*>(args.o.out) + p.out_rows.at(r.b, r.h, r.i);
#pragma unroll
  for (int c = 0; c < kPerLane; ++c) {
    const int64_t e = lane + c * kWarp;
    if (e < p.Ev) o_row[e] = from_float<T>(acc[c] * inv);
  }
  if (lane == 0) static_cast<float*>(args.o.lse)[row] = am::row_logsumexp(m, l);
}

// ---------------------------------------------------------------------------------------------
// Backward.

// D = rowsum(dO * O) (+ rowsum(W * dW)): warp per query row.
template <typename T>
__global__ void row_dot_kernel(BackwardArgs bp) {
  const Params& p = bp.fwd;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp;
  if (row >= p.B * p.Hq * p.L) return;
  const RowIndex r = decode_row(p, row);
  const T* o = static_cast<const T*>(bp.io.out) + p.out_rows.at(r.b, r.h, r.i);
  const T* go = static_cast<const T*>(bp.io.grad_out) + p.grad_out_rows.at(r.b, r.h, r.i);
  float d = 0.f;
  for (int64_t e = lane; e < p.Ev; e += kWarp) d += to_float(o[e]) * to_float(go[e]);
  if (bp.io.grad_weights != nullptr) {
    const T* w = static_cast<const T*>(bp.io.weights) + row * p.S;
    const T* gw = static_cast<const T*>(bp.io.grad_weights) + row * p.S;
    for (int64_t j = lane; j < p.S; j += kWarp) d += to_float(w[j]) * to_float(gw[j]);
  }
  d = warp_sum(d);
  if (lane == 0) bp.d_row[row] = d;
}

// Everything the backward recomputes for one (query row, key) pair.
struct PairGrad {
  float p_dropped;  // the probability that multiplied V in the forward
  float ds;         // dL/dscore
};

template <typename T>
__device__ __forceinline__ PairGrad pair_grad(const BackwardArgs& bp, const RowIndex& r,
                                              int64_t row, int64_t j, float raw_score, float dp) {
  const Params& p = bp.fwd;
  const float s = masked_score<T>(p, r.b, r.h, r.i, j, raw_score * static_cast<float>(p.scale));
  const float prob = am::prob_from_lse(s, static_cast<const float*>(bp.io.lse)[row]);
  const float f = p.dropout_p > 0.f
                      ? am::dropout_factor<float>(p.seed, static_cast<uint32_t>(row),
                                                  static_cast<uint32_t>(j), p.dropout_p,
                                                  static_cast<float>(p.keep_scale))
                      : 1.f;
  if (bp.io.grad_weights != nullptr) dp += to_float(static_cast<const T*>(bp.io.grad_weights)[row * p.S + j]);
  PairGrad g;
  g.p_dropped = prob * f;
  g.ds = am::softmax_grad(prob, dp * f, bp.d_row[row]);
  return g;
}

// dQ (and dmask): warp per query row, keys 32 at a time.
template <typename T, int kPerLane>
__global__ void dq_kernel(BackwardArgs bp) {
  extern __shared__ float smem[];
  const Params& p = bp.fwd;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp;
  if (row >= p.B * p.Hq * p.L) return;
  const RowIndex r = decode_row(p, row);
  float* q_sh = smem + warp * (p.E + p.Ev);
  float* go_sh = q_sh + p.E;
  const T* q_row = static_cast<const T*>(p.q) + r.b * p.q_sb + r.h * p.q_sh + r.i * p.q_sl;
  const T* go_row = static_cast<const T*>(bp.io.grad_out) + p.grad_out_rows.at(r.b, r.h, r.i);
  for (int64_t e = lane; e < p.E; e += kWarp) q_sh[e] = to_float(q_row[e]);
  for (int64_t e = lane; e < p.Ev; e += kWarp) go_sh[e] = to_float(go_row[e]);
  __syncwarp();
  const T* k_head = static_cast<const T*>(p.k) + r.b * p.k_sb + r.hk * p.k_sh;
  const T* v_head = static_cast<const T*>(p.v) + r.b * p.v_sb + r.hk * p.v_sh;
  const int64_t kv_end = p.causal ? (r.i + 1 < p.S ? r.i + 1 : p.S) : p.S;
  float dq[kPerLane];
#pragma unroll
  for (int c = 0; c < kPerLane; ++c) dq[c] = 0.f;
  for (int64_t j0 = 0; j0 < kv_end; j0 += kWarp) {
    const int64_t j = j0 + lane;
    float ds = 0.f;
    if (j < kv_end) {
      const float raw = dot_shared(q_sh, k_head + j * p.k_ss, p.E);
      const float dp = dot_shared(go_sh, v_head + j * p.v_ss, p.Ev);
      ds = pair_grad<T>(bp, r, row, j, raw, dp).ds;
      if (bp.io.dmask != nullptr) static_cast<float*>(bp.io.dmask)[row * p.S + j] = ds;
    }
    const int64_t n = kv_end - j0 < kWarp ? kv_end - j0 : kWarp;
    for (int t = 0; t < n; ++t) {
      const float dst = __shfl_sync(kFullMask, ds, t);
      const T* k_row = k_head + (j0 + t) * p.k_ss;
#pragma unroll
      for (int c = 0; c < kPerLane; ++c) {
        const int64_t e = lane + c * kWarp;
        if (e < p.E) dq[c] += dst * to_float(k_row[e]);
      }
    }
  }
  T* dq_row = static_cast<T*>(bp.io.dq) + row * p.E;
#pragma unroll
  for (int c = 0; c < kPerLane; ++c) {
    const int64_t e = lane + c * kWarp;
    if (e < p.E) dq_row[e] = from_float<T>(dq[c] * static_cast<float>(p.scale));
  }
}

// dK and dV: warp per key row, summing over the query heads of its group and the query rows
// that see it, 32 at a time.
template <typename T, int kPerLane>
__global__ void dkv_kernel(BackwardArgs bp) {
  extern __shared__ float smem[];
  const Params& p = bp.fwd;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t key_row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp;
  if (key_row >= p.B * p.Hk * p.S) return;
  const int64_t j = key_row % p.S, bhk = key_row / p.S, hk = bhk % p.Hk, b = bhk / p.Hk;
  float* k_sh = smem + warp * (p.E + p.Ev);
  float* v_sh = k_sh + p.E;
  const T* k_row = static_cast<const T*>(p.k) + b * p.k_sb + hk * p.k_sh + j * p.k_ss;
  const T* v_row = static_cast<const T*>(p.v) + b * p.v_sb + hk * p.v_sh + j * p.v_ss;
  for (int64_t e = lane; e < p.E; e += kWarp) k_sh[e] = to_float(k_row[e]);
  for (int64_t e = lane; e < p.Ev; e += kWarp) v_sh[e] = to_float(v_row[e]);
  __syncwarp();
  float dk[kPerLane], dv[kPerLane];
#pragma unroll
  for (int c = 0; c < kPerLane; ++c) dk[c] = dv[c] = 0.f;
  const int64_t i_begin = p.causal ? j : 0;  // rows before j never see key j
  for (int64_t g = 0; g < p.group; ++g) {
    const int64_t h = hk * p.group + g;
    const T* q_head = static_cast<const T*>(p.q) + b * p.q_sb + h * p.q_sh;
    const T* go_head = static_cast<const T*>(bp.io.grad_out) + p.grad_out_rows.at(b, h, 0);
    for (int64_t i0 = i_begin; i0 < p.L; i0 += kWarp) {
      const int64_t i = i0 + lane;
      PairGrad pg{0.f, 0.f};
      if (i < p.L) {
        RowIndex r{b, h, hk, i};
        const int64_t row = (b * p.Hq + h) * p.L + i;
        const float raw = dot_shared(k_sh, q_head + i * p.q_sl, p.E);
        const float dp = dot_shared(v_sh, go_head + i * p.grad_out_rows.sl, p.Ev);
        pg = pair_grad<T>(bp, r, row, j, raw, dp);
      }
      const int64_t n = p.L - i0 < kWarp ? p.L - i0 : kWarp;
      for (int t = 0; t < n; ++t) {
        const float pt = __shfl_sync(kFullMask, pg.p_dropped, t);
        const float dst = __shfl_sync(kFullMask, pg.ds, t);
        const T* q_i = q_head + (i0 + t) * p.q_sl;
        const T* go_i = go_head + (i0 + t) * p.grad_out_rows.sl;
#pragma unroll
        for (int c = 0; c < kPerLane; ++c) {
          const int64_t e = lane + c * kWarp;
          if (e < p.E) dk[c] += dst * to_float(q_i[e]);
          if (e < p.Ev) dv[c] += pt * to_float(go_i[e]);
        }
      }
    }
  }
  T* dk_row = static_cast<T*>(bp.io.dk) + key_row * p.E;
  T* dv_row = static_cast<T*>(bp.io.dv) + key_row * p.Ev;
#pragma unroll
  for (int c = 0; c < kPerLane; ++c) {
    const int64_t e = lane + c * kWarp;
    if (e < p.E) dk_row[e] = from_float<T>(dk[c] * static_cast<float>(p.scale));
    if (e < p.Ev) dv_row[e] = from_float<T>(dv[c]);
  }
}

// ---------------------------------------------------------------------------------------------

unsigned blocks_for(int64_t rows) {
  return static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
}

int per_lane(int64_t dim) { return static_cast<int>((dim + kWarp - 1) / kWarp); }

// Runtime head dim -> compile-time registers per lane (1, 2, 4 or 8).
template <template <typename, int> class Launch, typename T, typename Arg>
cudaError_t by_head_dim(int64_t dim, const Arg& arg, cudaStream_t stream) {
  const int n = per_lane(dim);
  if (n <= 1) Launch<T, 1>::run(arg, stream);
  else if (n <= 2) Launch<T, 2>::run(arg, stream);
  else if (n <= 4) Launch<T, 4>::run(arg, stream);
  else if (n <= 8) Launch<T, 8>::run(arg, stream);
  else return cudaErrorInvalidValue;
  return cudaGetLastError();
}

template <typename T, int kPerLane>
struct LaunchForward {
  static void run(const ForwardArgs& args, cudaStream_t stream) {
    const Params& p = args.p;
    const int64_t rows = p.B * p.Hq * p.L;
    if (rows == 0) return;
    const size_t smem = kWarpsPerBlock * p.E * sizeof(float);
    forward_kernel<T, kPerLane><<<blocks_for(rows), kWarpsPerBlock * kWarp, smem, stream>>>(args);
  }
};

template <typename T, int kPerLane>
struct LaunchBackward {
  static void run(const BackwardArgs& bp, cudaStream_t stream) {
    const Params& p = bp.fwd;
    const int64_t q_rows = p.B * p.Hq * p.L, k_rows = p.B * p.Hk * p.S;
    const size_t smem = kWarpsPerBlock * (p.E + p.Ev) * sizeof(float);
    if (q_rows > 0) {
      row_dot_kernel<T><<<blocks_for(q_rows), kWarpsPerBlock * kWarp, 0, stream>>>(bp);
      dq_kernel<T, kPerLane><<<blocks_for(q_rows), kWarpsPerBlock * kWarp, smem, stream>>>(bp);
    }
    if (k_rows > 0)
      dkv_kernel<T, kPerLane><<<blocks_for(k_rows), kWarpsPerBlock * kWarp, smem, stream>>>(bp);
  }
};

template <template <typename, int> class Launch, typename Arg>
cudaError_t by_dtype(attn::Dtype dtype, int64_t dim, const Arg& arg, cudaStream_t stream) {
  switch (dtype) {
    case attn::Dtype::kFloat32: return by_head_dim<Launch, float>(dim, arg, stream);
    case attn::Dtype::kFloat16: return by_head_dim<Launch, __half>(dim, arg, stream);
    case attn::Dtype::kBFloat16: return by_head_dim<Launch, __nv_bfloat16>(dim, arg, stream);
    case attn::Dtype::kFloat64: break;  // no float64 kernels
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t attention_forward(const attn::Params& params, const attn::ForwardOutputs& outputs,
                              cudaStream_t stream) {
  const int64_t dim = params.E > params.Ev ? params.E : params.Ev;
  if (dim > kMaxHeadDim) return cudaErrorInvalidValue;
  return by_dtype<LaunchForward>(params.dtype, params.Ev, ForwardArgs{params, outputs}, stream);
}

cudaError_t attention_backward(const attn::Params& params, const attn::BackwardBuffers& buffers,
                               float* d_row, cudaStream_t stream) {
  const int64_t dim = params.E > params.Ev ? params.E : params.Ev;
  if (dim > kMaxHeadDim) return cudaErrorInvalidValue;
  return by_dtype<LaunchBackward>(params.dtype, dim, BackwardArgs{params, buffers, d_row}, stream);
}

}  // namespace attention_cuda
}  // namespace fastseq
