// The pointwise backends (CPU, CUDA) that the device-agnostic sequence loops call per step.
#pragma once

#include <c10/core/ScalarType.h>

#include "gru_rnn/gru_rnn_steps.h"

namespace fastseq {
namespace gru_rnn {

struct PointwiseBackend {
  void (*gru_forward)(c10::ScalarType dtype, const GruStepForward& step);
  void (*gru_backward)(c10::ScalarType dtype, const GruStepBackward& step);
  void (*rnn_forward)(c10::ScalarType dtype, const RnnStepForward& step);
  void (*rnn_backward)(c10::ScalarType dtype, const RnnStepBackward& step);
};

const PointwiseBackend& cpu_backend();
#ifdef FASTSEQ_WITH_CUDA
const PointwiseBackend& cuda_backend();
#endif

}  // namespace gru_rnn
}  // namespace fastseq
