// Framework-free CUDA kernels of fused scaled-dot-product attention: the shared problem
// description (attention_params.h) and its buffers in, a cudaStream_t, nothing from torch
// (compiles with nvcc -c).
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "attention/attention_params.h"

namespace fastseq {
namespace attention_cuda {

// Largest head dim (E and Ev) the kernels hold in registers: 8 values per lane of a warp.
constexpr int kMaxHeadDim = 256;

// float32, float16 and bfloat16 (Params::dtype); float64 and head dims above kMaxHeadDim
// return cudaErrorInvalidValue (the glue rejects both before it gets here). lse, d_row and
// dmask are float32. Each returns cudaGetLastError() after its launches.
cudaError_t attention_forward(const attn::Params& params, const attn::ForwardOutputs& outputs,
                              cudaStream_t stream);
// d_row: [B, Hq, L] float32 scratch for rowsum(dO * O) (+ rowsum(W * dW)).
cudaError_t attention_backward(const attn::Params& params, const attn::BackwardBuffers& buffers,
                               float* d_row, cudaStream_t stream);

}  // namespace attention_cuda
}  // namespace fastseq
