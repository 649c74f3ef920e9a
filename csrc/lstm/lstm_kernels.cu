// CUDA LSTM pointwise kernels: one thread per (row, hidden unit), storage in
// float / double / half / bfloat16, math in float (double for double) via lstm_math.h.
#include "lstm/lstm_kernels.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "lstm/lstm_math.h"

namespace fastseq {
namespace lstm {
namespace {

template <class T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T> __device__ __forceinline__ T from_acc(float v);
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}
template <class T> __device__ __forceinline__ T from_acc(double v) { return static_cast<T>(v); }

template <class T>
__global__ void forward_step_kernel(ForwardStep s) {
  using A = typename AccType<T>::type;
  const int64_t H = s.hidden, n = s.rows * H;
  T* gates = static_cast<T*>(s.gates);
  const T* add = static_cast<const T*>(s.gates_add);
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < n;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = k / H, j = k - r * H, g0 = r * 4 * H + j;
    A i = to_acc(gates[g0]), f = to_acc(gates[g0 + H]), g = to_acc(gates[g0 + 2 * H]),
      o = to_acc(gates[g0 + 3 * H]);
    if (add) {
      i += to_acc(add[g0]);
      f += to_acc(add[g0 + H]);
      g += to_acc(add[g0 + 2 * H]);
      o += to_acc(add[g0 + 3 * H]);
    }
    A c, h;
    gates_forward<ScalarActivations>(i, f, g, o, to_acc(static_cast<const T*>(s.c_prev)[k]), c, h);
    gates[g0] = from_acc<T>(i);
    gates[g0 + H] = from_acc<T>(f);
    gates[g0 + 2 * H] = from_acc<T>(g);
    gates[g0 + 3 * H] = from_acc<T>(o);
    static_cast<T*>(s.c_next)[k] = from_acc<T>(c);
    if (s.c_saved) static_cast<T*>(s.c_saved)[k] = from_acc<T>(c);
    static_cast<T*>(s.h_out)[k] = from_acc<T>(h);
    if (s.h_out2) static_cast<T*>(s.h_out2)[k] = from_acc<T>(h);
  }
}

template <class T>
__global__ void backward_step_kernel(BackwardStep s) {
  using A = typename AccType<T>::type;
  const int64_t H = s.hidden, n = s.rows * H;
  const T* gates = static_cast<const T*>(s.gates);
  T* dgates = static_cast<T*>(s.dgates);
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < n;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = k / H, j = k - r * H, g0 = r * 4 * H + j;
    A dh = to_acc(static_cast<const T*>(s.dh)[k]);
    if (s.dh2) dh += to_acc(static_cast<const T*>(s.dh2)[k]);
    A dc = to_acc(static_cast<T*>(s.dc)[k]), di, df, dg, d_o, h_pre;
    gates_backward<ScalarActivations>(to_acc(gates[g0]), to_acc(gates[g0 + H]),
                                      to_acc(gates[g0 + 2 * H]), to_acc(gates[g0 + 3 * H]),
                                      to_acc(static_cast<const T*>(s.c)[k]),
                                      to_acc(static_cast<const T*>(s.c_prev)[k]), dh, dc, di, df,
                                      dg, d_o, h_pre);
    static_cast<T*>(s.dc)[k] = from_acc<T>(dc);
    dgates[g0] = from_acc<T>(di);
    dgates[g0 + H] = from_acc<T>(df);
    dgates[g0 + 2 * H] = from_acc<T>(dg);
    dgates[g0 + 3 * H] = from_acc<T>(d_o);
    if (s.h_pre) static_cast<T*>(s.h_pre)[k] = from_acc<T>(h_pre);
  }
}

constexpr int kThreads = 256;

inline unsigned blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(b < 65535 ? b : 65535);  // grid-stride loops cover the rest
}

}  // namespace

cudaError_t launch_forward_step(const ForwardStep& step, Dtype dtype, cudaStream_t stream) {
  const int64_t n = step.rows * step.hidden;
  if (n == 0) return cudaSuccess;
  switch (dtype) {
    case Dtype::f32: forward_step_kernel<float><<<blocks_for(n), kThreads, 0, stream>>>(step); break;
    case Dtype::f64: forward_step_kernel<double><<<blocks_for(n), kThreads, 0, stream>>>(step); break;
    case Dtype::f16: forward_step_kernel<__half><<<blocks_for(n), kThreads, 0, stream>>>(step); break;
    case Dtype::bf16: forward_step_kernel<__nv_bfloat16><<<blocks_for(n), kThreads, 0, stream>>>(step); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t launch_backward_step(const BackwardStep& step, Dtype dtype, cudaStream_t stream) {
  const int64_t n = step.rows * step.hidden;
  if (n == 0) return cudaSuccess;
  switch (dtype) {
    case Dtype::f32: backward_step_kernel<float><<<blocks_for(n), kThreads, 0, stream>>>(step); break;
    case Dtype::f64: backward_step_kernel<double><<<blocks_for(n), kThreads, 0, stream>>>(step); break;
    case Dtype::f16: backward_step_kernel<__half><<<blocks_for(n), kThreads, 0, stream>>>(step); break;
    case Dtype::bf16: backward_step_kernel<__nv_bfloat16><<<blocks_for(n), kThreads, 0, stream>>>(step); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace lstm
}  // namespace fastseq
