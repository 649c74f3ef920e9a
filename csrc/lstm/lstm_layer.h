// Internal: the device-generic LSTM sequence loops (GEMMs through ATen, so cuBLAS or MKL
// underneath) and the per-device pointwise passes they call once per step.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

#include "lstm/lstm_params.h"

namespace fastseq {
namespace lstm {

struct Pointwise {
  void (*forward)(const ForwardStep&, c10::ScalarType);
  void (*backward)(const BackwardStep&, c10::ScalarType);
};

void forward_step_cpu(const ForwardStep& step, c10::ScalarType dtype);
void backward_step_cpu(const BackwardStep& step, c10::ScalarType dtype);
#ifdef FASTSEQ_WITH_CUDA
void forward_step_cuda(const ForwardStep& step, c10::ScalarType dtype);
void backward_step_cuda(const BackwardStep& step, c10::ScalarType dtype);
#endif

// Same contracts as fastseq::lstm_layer_forward / _backward / lstm_cell_* (lstm/lstm.h);
// inputs are already checked and on one device.
std::vector<at::Tensor> layer_forward(const Pointwise& pw, const at::Tensor& input,
                                      const at::Tensor& h0, const at::Tensor& c0,
                                      const at::Tensor& w_ih, const at::Tensor& w_hh,
                                      const std::optional<at::Tensor>& bias,
                                      const std::optional<at::Tensor>& w_hr,
                                      const int64_t* batch_sizes, bool reverse,
                                      bool save_for_backward);

// True when layer_forward saved the gates and cells in float32 for a bfloat16 input (the CPU
// engine's bfloat16 steps); layer_backward then runs the engine's bfloat16 backward steps.
bool saved_float32_for_backward(const at::Tensor& input, const at::Tensor& gates, bool proj);

std::vector<at::Tensor> layer_backward(const Pointwise& pw, const at::Tensor& grad_output,
                                       const at::Tensor& grad_h_n, const at::Tensor& grad_c_n,
                                       const at::Tensor& input, const at::Tensor& h0,
                                       const at::Tensor& c0, const at::Tensor& w_ih,
                                       const at::Tensor& w_hh, const std::optional<at::Tensor>& w_hr,
                                       const int64_t* batch_sizes, bool reverse, bool has_bias,
                                       const at::Tensor& output, const at::Tensor& gates,
                                       const at::Tensor& cells, bool need_d_input);

std::vector<at::Tensor> cell_forward(const Pointwise& pw, const at::Tensor& input,
                                     const at::Tensor& h, const at::Tensor& c,
                                     const at::Tensor& w_ih, const at::Tensor& w_hh,
                                     const std::optional<at::Tensor>& bias);

std::vector<at::Tensor> cell_backward(const Pointwise& pw, const at::Tensor& grad_h_next,
                                      const at::Tensor& grad_c_next, const at::Tensor& input,
                                      const at::Tensor& h, const at::Tensor& c,
                                      const at::Tensor& w_ih, const at::Tensor& w_hh,
                                      bool has_bias, const at::Tensor& gates,
                                      const at::Tensor& c_next, bool need_d_input, bool need_d_h);

}  // namespace lstm
}  // namespace fastseq
