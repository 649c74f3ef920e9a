// Autograd-aware LSTMCell step as a C++ autograd Function: decoder loops call the cell once
// per step, and a C++ autograd node costs a fraction of a Python torch.autograd.Function
// (apply, setup_context and the backward call) at these step sizes.
#include <ATen/TensorOperators.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/tanh.h>
#include <torch/csrc/autograd/custom_function.h>

#include "common/recompute_grad.h"
#include "lstm/lstm.h"

namespace fastseq {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The step in differentiable ATen ops, torch's gate order (i, f, g, o): {h', c'}.
variable_list lstm_cell_recomputed(const variable_list& s) {
  const auto& [x, h, c, w_ih, w_hh, b_ih, b_hh] =
      std::tie(s[0], s[1], s[2], s[3], s[4], s[7], s[8]);
  auto gates = (at::linear(x, w_ih, b_ih.defined() ? std::optional<at::Tensor>(b_ih) : std::nullopt) +
                at::linear(h, w_hh, b_hh.defined() ? std::optional<at::Tensor>(b_hh) : std::nullopt))
                   .chunk(4, 1);
  auto c_next = at::sigmoid(gates[1]) * c + at::sigmoid(gates[0]) * at::tanh(gates[2]);
  return {at::sigmoid(gates[3]) * at::tanh(c_next), c_next};
}

struct LstmCellFunction : torch::autograd::Function<LstmCellFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& h,
                               const at::Tensor& c, const at::Tensor& w_ih, const at::Tensor& w_hh,
                               const std::optional<at::Tensor>& b_ih,
                               const std::optional<at::Tensor>& b_hh) {
    auto out = lstm_cell_forward(input, h, c, w_ih, w_hh, b_ih, b_hh);  // {h', c', gates}
    // The biases are saved only for a double backward's recomputation (no copy: references).
    ctx->save_for_backward({input, h, c, w_ih, w_hh, out[2], out[1], b_ih.value_or(at::Tensor()),
                            b_hh.value_or(at::Tensor())});
    ctx->saved_data["has_b_ih"] = b_ih.has_value() && b_ih->defined();
    ctx->saved_data["has_b_hh"] = b_hh.has_value() && b_hh->defined();
    ctx->mark_non_differentiable({out[2]});
    return {out[0], out[1]};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const bool has_b_ih = ctx->saved_data["has_b_ih"].toBool();
    const bool has_b_hh = ctx->saved_data["has_b_hh"].toBool();
    const bool need_x = ctx->needs_input_grad(0), need_h = ctx->needs_input_grad(1);
    if (at::GradMode::is_enabled()) {  // create_graph=True: gradients must be differentiable
      std::vector<bool> needed;
      for (size_t i = 0; i < 7; ++i) needed.push_back(ctx->needs_input_grad(i));
      return grad_through(lstm_cell_recomputed(s), {grads[0], grads[1]},
                          {s[0], s[1], s[2], s[3], s[4], s[7], s[8]}, needed);
    }
    auto opt = [](const at::Tensor& g) { return g.defined() ? std::optional<at::Tensor>(g) : std::nullopt; };
    // {d_input, d_h, d_c, d_w_ih, d_w_hh, d_bias}
    auto g = lstm_cell_backward(opt(grads[0]), opt(grads[1]), s[0], s[1], s[2], s[3], s[4],
                                has_b_ih || has_b_hh, s[5], s[6], need_x, need_h);
    return {need_x ? g[0] : at::Tensor(), need_h ? g[1] : at::Tensor(), g[2], g[3], g[4],
            has_b_ih ? g[5] : at::Tensor(), has_b_hh ? g[5] : at::Tensor()};
  }
};

}  // namespace

std::vector<at::Tensor> lstm_cell(const at::Tensor& input, const at::Tensor& h, const at::Tensor& c,
                                  const at::Tensor& w_ih, const at::Tensor& w_hh,
                                  const std::optional<at::Tensor>& b_ih,
                                  const std::optional<at::Tensor>& b_hh) {
  return LstmCellFunction::apply(input, h, c, w_ih, w_hh, b_ih, b_hh);
}

}  // namespace fastseq
