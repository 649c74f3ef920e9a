// Framework-free CUDA launchers for one GRU / RNN time step's pointwise work (see
// gru_rnn_steps.h for the pointer layout). T is float, double, __half or __nv_bfloat16;
// the 16-bit types compute and keep the workspace in float.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "gru_rnn/gru_rnn_steps.h"

namespace fastseq {
namespace gru_rnn {

template <typename T> void launch_gru_forward_step(const GruStepForward& step, cudaStream_t stream);
template <typename T> void launch_gru_backward_step(const GruStepBackward& step, cudaStream_t stream);
template <typename T> void launch_rnn_forward_step(const RnnStepForward& step, cudaStream_t stream);
template <typename T> void launch_rnn_backward_step(const RnnStepBackward& step, cudaStream_t stream);

}  // namespace gru_rnn
}  // namespace fastseq
