// The LSTM op surface of fastseq._C: one layer in one direction over a whole sequence
// (forward and backward through time) and the single-step cell, dispatched by device.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

namespace fastseq {

// input [T, B, I], h0 [B, P], c0 [B, H], w_ih [4H, I], w_hh [4H, P], b_ih / b_hh [4H],
// w_hr [P, H] (projection; P = H without it), batch_sizes: int64 CPU [T], non-increasing
// (PackedSequence: at step t only rows < batch_sizes[t] are active; the others keep their
// state and output 0). reverse: run t = T-1 .. 0.
// Returns {output [T, B, P], h_n [B, P], c_n [B, H], gates [T, B, 4H] (activated),
//          cells [T, B, H] (c after each step, carried over for inactive rows)};
// the last two are what lstm_layer_backward needs. save_for_backward = false (inference)
// returns them empty and computes the input projection chunk by chunk, in cache.
std::vector<at::Tensor> lstm_layer_forward(
    const at::Tensor& input, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& w_hr,
    const std::optional<at::Tensor>& batch_sizes, bool reverse, bool save_for_backward = true);

// Gradients of lstm_layer_forward. grad_output / grad_h_n / grad_c_n may be undefined
// (no gradient flows there); need_d_input = false skips the d_input GEMM (first layer on
// data). Returns {d_input (empty when not needed), d_h0, d_c0, d_w_ih, d_w_hh, d_bias [4H]
// (the gradient of b_ih and of b_hh alike; empty when has_bias is false), d_w_hr (empty
// without projection)}.
std::vector<at::Tensor> lstm_layer_backward(
    const std::optional<at::Tensor>& grad_output, const std::optional<at::Tensor>& grad_h_n,
    const std::optional<at::Tensor>& grad_c_n, const at::Tensor& input, const at::Tensor& h0,
    const at::Tensor& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& w_hr, const std::optional<at::Tensor>& batch_sizes,
    bool reverse, bool has_bias, const at::Tensor& output, const at::Tensor& gates,
    const at::Tensor& cells, bool need_d_input);

// One LSTMCell step: input [B, I], h [B, H], c [B, H]. Returns {h', c', gates (activated)}.
std::vector<at::Tensor> lstm_cell_forward(const at::Tensor& input, const at::Tensor& h,
                                          const at::Tensor& c, const at::Tensor& w_ih,
                                          const at::Tensor& w_hh,
                                          const std::optional<at::Tensor>& b_ih,
                                          const std::optional<at::Tensor>& b_hh);

// Returns {d_input, d_h, d_c, d_w_ih, d_w_hh, d_bias (empty when has_bias is false)};
// need_d_input / need_d_h = false skip those GEMMs and return them empty.
std::vector<at::Tensor> lstm_cell_backward(
    const std::optional<at::Tensor>& grad_h_next, const std::optional<at::Tensor>& grad_c_next,
    const at::Tensor& input, const at::Tensor& h, const at::Tensor& c, const at::Tensor& w_ih,
    const at::Tensor& w_hh, bool has_bias, const at::Tensor& gates, const at::Tensor& c_next,
    bool need_d_input = true, bool need_d_h = true);

// lstm_cell_forward with its autograd as a C++ node (eager decoder loops): {h', c'}.
std::vector<at::Tensor> lstm_cell(const at::Tensor& input, const at::Tensor& h, const at::Tensor& c,
                                  const at::Tensor& w_ih, const at::Tensor& w_hh,
                                  const std::optional<at::Tensor>& b_ih,
                                  const std::optional<at::Tensor>& b_hh);

}  // namespace fastseq
