// Device-agnostic sequence loops: GEMMs through ATen (MKL / cuBLAS underneath), the
// pointwise part of each step through a backend. Inputs are already checked and contiguous.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>
#include <vector>

#include "gru_rnn/gru_rnn_backend.h"

namespace fastseq {
namespace gru_rnn {

// What a loop needs to know about the sequence beyond the tensors.
struct SequencePlan {
  std::vector<int64_t> rows;  // active rows per time step (all B when not packed)
  bool packed;                // some step has fewer than B rows: inactive rows must read as 0
  bool reverse;
};

// gates = 3 (GRU) or 1 (RNN); biases already materialised (zeros when absent).
std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_forward_loop(
    const PointwiseBackend& backend, const at::Tensor& x, const at::Tensor& h0,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& b_ih, const at::Tensor& b_hh,
    const SequencePlan& plan, bool need_workspace);

std::vector<at::Tensor> gru_backward_loop(
    const PointwiseBackend& backend, const at::Tensor& grad_out, const at::Tensor& grad_hy,
    const at::Tensor& x, const at::Tensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const at::Tensor& out, const at::Tensor& ws, const SequencePlan& plan, bool need_input_grad,
    bool need_hx_grad);

std::tuple<at::Tensor, at::Tensor> rnn_forward_loop(
    const PointwiseBackend& backend, const at::Tensor& x, const at::Tensor& h0,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& b_ih, const at::Tensor& b_hh,
    const SequencePlan& plan, bool relu);

std::vector<at::Tensor> rnn_backward_loop(
    const PointwiseBackend& backend, const at::Tensor& grad_out, const at::Tensor& grad_hy,
    const at::Tensor& x, const at::Tensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const at::Tensor& out, const SequencePlan& plan, bool relu, bool need_input_grad, bool need_hx_grad);

// One step with no time loop, for the cells: x [B, I], h [B, H] -> h' (and the workspace).
std::tuple<at::Tensor, at::Tensor> gru_cell_forward_impl(
    const PointwiseBackend& backend, const at::Tensor& x, const at::Tensor& h, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const at::Tensor& b_ih, const at::Tensor& b_hh, bool need_workspace);

at::Tensor rnn_cell_forward_impl(
    const PointwiseBackend& backend, const at::Tensor& x, const at::Tensor& h, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const at::Tensor& b_ih, const at::Tensor& b_hh, bool relu);

}  // namespace gru_rnn
}  // namespace fastseq
