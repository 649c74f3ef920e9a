// CUDA host glue of fused attention: the checked problem (attn::Params, built in attention.cpp)
// launched on the current stream under a device guard; the kernels live in
// attention_kernels.cu.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
// c10/cuda/CUDAStream.h, not ATen/cuda/CUDAContext.h: that one includes the cuBLAS, cuSPARSE and
// cuSOLVER headers, which a toolkit of nvcc and the CUDA runtime alone lacks.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include "attention/attention.h"
#include "attention/attention_kernels.cuh"

namespace fastseq {
namespace {

namespace ac = attention_cuda;

constexpr const char* kOp = "scaled_dot_product_attention";

void check_supported(const attn::Params& p) {
  // attention.cpp rejects float64 CUDA inputs with the user-facing message; this guards the
  // kernels' own contract.
  TORCH_CHECK(p.dtype != attn::Dtype::kFloat64, kOp,
              ": the CUDA kernels support float32, float16 and bfloat16, got float64");
  TORCH_CHECK(p.E <= ac::kMaxHeadDim && p.Ev <= ac::kMaxHeadDim, kOp,
              ": CUDA kernels support head dims up to ", ac::kMaxHeadDim, ", got query/key ", p.E,
              " and value ", p.Ev);
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, kOp, ": ", what, " kernel launch failed: ",
              cudaGetErrorString(err));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void attention_forward_cuda(c10::Device device, const attn::Params& params,
                            const attn::ForwardOutputs& outputs) {
  check_supported(params);
  const c10::cuda::CUDAGuard guard(device);
  check_launch(ac::attention_forward(params, outputs, c10::cuda::getCurrentCUDAStream()), "forward");
}

void attention_backward_cuda(c10::Device device, const attn::Params& params,
                             const attn::BackwardBuffers& buffers) {
  check_supported(params);
  const c10::cuda::CUDAGuard guard(device);
  at::Tensor d_row = at::empty({params.B, params.Hq, params.L},
                               at::TensorOptions().device(device).dtype(at::kFloat));
  check_launch(ac::attention_backward(params, buffers, d_row.mutable_data_ptr<float>(),
                                      c10::cuda::getCurrentCUDAStream()),
               "backward");
}

}  // namespace fastseq
