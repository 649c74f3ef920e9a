// CUDA backend of the GRU / RNN steps: maps the tensor dtype to a kernel instantiation and
// launches it on the current stream (the time loop, its cuBLAS GEMMs through ATen and the
// device guard live in gru_rnn_loops.cpp / gru_rnn.cpp, shared with the CPU).
// c10/cuda/CUDAStream.h, not ATen/cuda/CUDAContext.h: that one includes the cuBLAS, cuSPARSE and
// cuSOLVER headers, which a toolkit of nvcc and the CUDA runtime alone lacks.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>

#include "gru_rnn/gru_rnn_backend.h"
#include "gru_rnn/gru_rnn_kernels.cuh"

namespace fastseq {
namespace gru_rnn {
namespace {

// Calls launch.template operator()<T>() with T the CUDA element type of dtype.
template <class Launch>
void by_dtype(c10::ScalarType dtype, const Launch& launch) {
  switch (dtype) {
    case c10::ScalarType::Float: launch(float{}); break;
    case c10::ScalarType::Double: launch(double{}); break;
    case c10::ScalarType::Half: launch(__half{}); break;
    case c10::ScalarType::BFloat16: launch(__nv_bfloat16{}); break;
    default: TORCH_CHECK(false, "fastseq gru/rnn cuda: unsupported dtype ", dtype);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void cuda_gru_forward(c10::ScalarType dtype, const GruStepForward& step) {
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  by_dtype(dtype, [&](auto tag) { launch_gru_forward_step<decltype(tag)>(step, stream); });
}

void cuda_gru_backward(c10::ScalarType dtype, const GruStepBackward& step) {
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  by_dtype(dtype, [&](auto tag) { launch_gru_backward_step<decltype(tag)>(step, stream); });
}

void cuda_rnn_forward(c10::ScalarType dtype, const RnnStepForward& step) {
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  by_dtype(dtype, [&](auto tag) { launch_rnn_forward_step<decltype(tag)>(step, stream); });
}

void cuda_rnn_backward(c10::ScalarType dtype, const RnnStepBackward& step) {
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  by_dtype(dtype, [&](auto tag) { launch_rnn_backward_step<decltype(tag)>(step, stream); });
}

}  // namespace

const PointwiseBackend& cuda_backend() {
  static const PointwiseBackend backend{cuda_gru_forward, cuda_gru_backward, cuda_rnn_forward, cuda_rnn_backward};
  return backend;
}

}  // namespace gru_rnn
}  // namespace fastseq
