// CUDA kernels for one GRU / RNN time step: one thread per (row, hidden unit), grid-stride,
// running the formulas of gru_rnn_math.h (the same code the CPU tests exercise).
#include "gru_rnn/gru_rnn_kernels.cuh"

#include "gru_rnn/gru_rnn_math.h"

namespace fastseq {
namespace gru_rnn {
namespace {

template <typename T> struct Acc { using type = T; };
template <> struct Acc<__half> { using type = float; };
template <> struct Acc<__nv_bfloat16> { using type = float; };

__device__ __forceinline__ float load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ double load(const double* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load(const __half* p, int64_t i) { return __half2float(p[i]); }
__device__ __forceinline__ float load(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }

__device__ __forceinline__ void store(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store(double* p, int64_t i, double v) { p[i] = v; }
__device__ __forceinline__ void store(__half* p, int64_t i, float v) { p[i] = __float2half_rn(v); }
__device__ __forceinline__ void store(__nv_bfloat16* p, int64_t i, float v) { p[i] = __float2bfloat16_rn(v); }

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;

inline int blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<int>(b < kMaxBlocks ? b : kMaxBlocks);
}

#define FASTSEQ_GRID_STRIDE(i, n) \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

template <typename T>
__global__ void gru_forward_step_kernel(GruStepForward s) {
  using acc_t = typename Acc<T>::type;
  const int64_t H = s.hidden;
  const T* gi = static_cast<const T*>(s.gi);
  const T* gh = static_cast<const T*>(s.gh);
  const T* bi = static_cast<const T*>(s.b_ih);
  const T* bh = static_cast<const T*>(s.b_hh);
  const T* h_in = static_cast<const T*>(s.h_in);
  T* h_out = static_cast<T*>(s.h_out);
  T* out = static_cast<T*>(s.out);
  acc_t* ws = static_cast<acc_t*>(s.ws);
  FASTSEQ_GRID_STRIDE(i, s.rows * H) {
    const int64_t b = i / H, j = i - b * H, g = b * 3 * H + j;
    acc_t r, z, n, h_new;
    const acc_t gh_n = load(gh, g + 2 * H) + load(bh, j + 2 * H);
    gru_forward_point<ScalarMath>(load(gi, g) + load(bi, j), load(gi, g + H) + load(bi, j + H),
                                  load(gi, g + 2 * H) + load(bi, j + 2 * H), load(gh, g) + load(bh, j),
                                  load(gh, g + H) + load(bh, j + H), gh_n, static_cast<acc_t>(load(h_in, i)),
                                  r, z, n, h_new);
    store(h_out, i, h_new);
    store(out, i, h_new);
    if (ws) {
      acc_t* w = ws + b * 4 * H + j;
      w[0] = r;
      w[H] = z;
      w[2 * H] = n;
      w[3 * H] = gh_n;
    }
  }
}

template <typename T>
__global__ void gru_backward_step_kernel(GruStepBackward s) {
  using acc_t = typename Acc<T>::type;
  const int64_t H = s.hidden;
  const T* grad_out = static_cast<const T*>(s.grad_out);
  T* dh = static_cast<T*>(s.dh);
  const T* h_prev = static_cast<const T*>(s.h_prev);
  const acc_t* ws = static_cast<const acc_t*>(s.ws);
  T* dgi = static_cast<T*>(s.dgi);
  T* dgh = static_cast<T*>(s.dgh);
  FASTSEQ_GRID_STRIDE(i, s.rows * H) {
    const int64_t b = i / H, j = i - b * H, g = b * 3 * H + j;
    const acc_t* w = ws + b * 4 * H + j;
    acc_t d_ar, d_az, d_an, d_ghn, dh_direct;
    gru_backward_point(static_cast<acc_t>(load(dh, i)) + static_cast<acc_t>(load(grad_out, i)),
                       static_cast<acc_t>(load(h_prev, i)), w[0], w[H], w[2 * H], w[3 * H],
                       d_ar, d_az, d_an, d_ghn, dh_direct);
    store(dgi, g, d_ar);
    store(dgi, g + H, d_az);
    store(dgi, g + 2 * H, d_an);
    store(dgh, g, d_ar);
    store(dgh, g + H, d_az);
    store(dgh, g + 2 * H, d_ghn);
    store(dh, i, dh_direct);
  }
}

template <typename T, bool kRelu>
__global__ void rnn_forward_step_kernel(RnnStepForward s) {
  using acc_t = typename Acc<T>::type;
  const int64_t H = s.hidden;
  const T* gi = static_cast<const T*>(s.gi);
  const T* gh = static_cast<const T*>(s.gh);
  const T* bi = static_cast<const T*>(s.b_ih);
  const T* bh = static_cast<const T*>(s.b_hh);
  T* h = static_cast<T*>(s.h);
  T* out = static_cast<T*>(s.out);
  FASTSEQ_GRID_STRIDE(i, s.rows * H) {
    const int64_t j = i % H;
    const acc_t h_new = rnn_forward_point<kRelu, ScalarMath>(static_cast<acc_t>(load(gi, i) + load(bi, j)),
                                                             static_cast<acc_t>(load(gh, i) + load(bh, j)));
    store(h, i, h_new);
    store(out, i, h_new);
  }
}

template <typename T, bool kRelu>
__global__ void rnn_backward_step_kernel(RnnStepBackward s) {
  using acc_t = typename Acc<T>::type;
  const T* grad_out = static_cast<const T*>(s.grad_out);
  const T* dh = static_cast<const T*>(s.dh);
  const T* h_new = static_cast<const T*>(s.h_new);
  T* da = static_cast<T*>(s.da);
  FASTSEQ_GRID_STRIDE(i, s.rows * s.hidden) {
    store(da, i, rnn_backward_point<kRelu, ScalarMath>(
                     static_cast<acc_t>(load(dh, i)) + static_cast<acc_t>(load(grad_out, i)),
                     static_cast<acc_t>(load(h_new, i))));
  }
}

}  // namespace

template <typename T>
void launch_gru_forward_step(const GruStepForward& step, cudaStream_t stream) {
  const int64_t n = step.rows * step.hidden;
  if (n > 0) gru_forward_step_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(step);
}

template <typename T>
void launch_gru_backward_step(const GruStepBackward& step, cudaStream_t stream) {
  const int64_t n = step.rows * step.hidden;
  if (n > 0) gru_backward_step_kernel<T><<<blocks_for(n), kThreads, 0, stream>>>(step);
}

template <typename T>
void launch_rnn_forward_step(const RnnStepForward& step, cudaStream_t stream) {
  const int64_t n = step.rows * step.hidden;
  if (n <= 0) return;
  if (step.relu) rnn_forward_step_kernel<T, true><<<blocks_for(n), kThreads, 0, stream>>>(step);
  else rnn_forward_step_kernel<T, false><<<blocks_for(n), kThreads, 0, stream>>>(step);
}

template <typename T>
void launch_rnn_backward_step(const RnnStepBackward& step, cudaStream_t stream) {
  const int64_t n = step.rows * step.hidden;
  if (n <= 0) return;
  if (step.relu) rnn_backward_step_kernel<T, true><<<blocks_for(n), kThreads, 0, stream>>>(step);
  else rnn_backward_step_kernel<T, false><<<blocks_for(n), kThreads, 0, stream>>>(step);
}

#define FASTSEQ_INSTANTIATE(T)                                                            \
  template void launch_gru_forward_step<T>(const GruStepForward&, cudaStream_t);           \
  template void launch_gru_backward_step<T>(const GruStepBackward&, cudaStream_t);         \
  template void launch_rnn_forward_step<T>(const RnnStepForward&, cudaStream_t);           \
  template void launch_rnn_backward_step<T>(const RnnStepBackward&, cudaStream_t);

FASTSEQ_INSTANTIATE(float)
FASTSEQ_INSTANTIATE(double)
FASTSEQ_INSTANTIATE(__half)
FASTSEQ_INSTANTIATE(__nv_bfloat16)

}  // namespace gru_rnn
}  // namespace fastseq
