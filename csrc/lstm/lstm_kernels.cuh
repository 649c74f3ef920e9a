// Framework-free CUDA launchers of the LSTM pointwise passes (lstm_math.h formulas): raw
// pointers in a step struct, a dtype tag and a stream; shared by lstm_cuda.cpp and nvcc.
#pragma once

#include <cuda_runtime_api.h>

#include "lstm/lstm_params.h"

namespace fastseq {
namespace lstm {

// Each returns the launch's error (cudaSuccess when fine); the caller checks it.
cudaError_t launch_forward_step(const ForwardStep& step, Dtype dtype, cudaStream_t stream);
cudaError_t launch_backward_step(const BackwardStep& step, Dtype dtype, cudaStream_t stream);

}  // namespace lstm
}  // namespace fastseq
