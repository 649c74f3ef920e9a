// CUDA glue of the LSTM pointwise passes: dtype mapping, the current stream, launch checks.
// (The sequence loop and its cuBLAS GEMMs are device-generic, in lstm_layer.cpp; the device
// guard is set by the entry points in lstm.cpp.)
// c10/cuda/CUDAStream.h, not ATen/cuda/CUDAContext.h: that one includes the cuBLAS, cuSPARSE and
// cuSOLVER headers, which a toolkit of nvcc and the CUDA runtime alone lacks.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>

#include "lstm/lstm_kernels.cuh"
#include "lstm/lstm_layer.h"

namespace fastseq {
namespace lstm {
namespace {

Dtype cuda_dtype(c10::ScalarType st) {
  switch (st) {
    case at::kFloat: return Dtype::f32;
    case at::kDouble: return Dtype::f64;
    case at::kHalf: return Dtype::f16;
    case at::kBFloat16: return Dtype::bf16;
    default: break;
  }
  TORCH_CHECK(false, "fastseq LSTM (CUDA): unsupported dtype ", st);
  return Dtype::f32;  // unreachable
}

}  // namespace

void forward_step_cuda(const ForwardStep& step, c10::ScalarType dtype) {
  C10_CUDA_CHECK(launch_forward_step(step, cuda_dtype(dtype), c10::cuda::getCurrentCUDAStream()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void backward_step_cuda(const BackwardStep& step, c10::ScalarType dtype) {
  C10_CUDA_CHECK(launch_backward_step(step, cuda_dtype(dtype), c10::cuda::getCurrentCUDAStream()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace lstm
}  // namespace fastseq
