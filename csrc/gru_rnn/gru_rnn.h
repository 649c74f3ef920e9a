// fastseq._C entry points for the fused GRU and Elman RNN (one layer, one direction over a
// whole sequence; a cell is the T = 1 case). Time-major: input [T, B, I], state [B, H].
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace fastseq {

// batch_sizes: optional int64 CPU [T], non-increasing (PackedSequence order): only rows
// < batch_sizes[t] step at time t; the others keep their state and output 0.
// Returns (output [T, B, H], h_n [B, H], workspace): the workspace is what backward needs
// ([T, B, 4H] in the accumulation dtype) when need_workspace, else an empty tensor.
std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_forward(
    const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& batch_sizes, bool reverse, bool need_workspace);

// Returns {d input, d hx, d w_ih, d w_hh, d b_ih, d b_hh}; d input / d hx are empty tensors
// when not needed (skipping their GEMMs: for a cell, d hx is one of its four GEMMs).
std::vector<at::Tensor> gru_backward(
    const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& input,
    const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const at::Tensor& output, const at::Tensor& workspace,
    const std::optional<at::Tensor>& batch_sizes, bool reverse, bool need_input_grad, bool need_hx_grad);

// nonlinearity: "tanh" or "relu". Returns (output [T, B, H], h_n [B, H]); backward needs
// only the output (both activations' derivatives are functions of it).
std::tuple<at::Tensor, at::Tensor> rnn_forward(
    const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& batch_sizes, bool reverse, const std::string& nonlinearity);

std::vector<at::Tensor> rnn_backward(
    const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& input,
    const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const at::Tensor& output, const std::optional<at::Tensor>& batch_sizes, bool reverse,
    const std::string& nonlinearity, bool need_input_grad, bool need_hx_grad);

// Single steps for GRUCell / RNNCell with little per-call work (no time loop, no copies):
// input [B, I], hx [B, H]. gru_cell_forward returns (h' [B, H], workspace [B or 0, 4H]); the
// backward of both is gru_backward / rnn_backward with T = 1 (output = h'[None]).
std::tuple<at::Tensor, at::Tensor> gru_cell_forward(
    const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh, bool need_workspace);

at::Tensor rnn_cell_forward(
    const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh, const std::string& nonlinearity);

// The same steps with their autograd (C++ nodes, for the eager hot path of the cells).
at::Tensor gru_cell(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh);

at::Tensor rnn_cell(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
                    const std::string& nonlinearity);

}  // namespace fastseq
