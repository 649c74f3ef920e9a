// Autograd-aware GRUCell / RNNCell steps as C++ autograd Functions: decoder loops call a
// cell once per step, and a C++ autograd node costs a fraction of a Python
// torch.autograd.Function in both forward and backward. The gradients are the layer
// backward's with T = 1.
#include <ATen/TensorOperators.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/tanh.h>
#include <ATen/ops/zeros_like.h>
#include <torch/csrc/autograd/custom_function.h>

#include "common/recompute_grad.h"
#include "gru_rnn/gru_rnn.h"

namespace fastseq {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

void save_bias_flags(AutogradContext* ctx, const std::optional<at::Tensor>& b_ih,
                     const std::optional<at::Tensor>& b_hh) {
  ctx->saved_data["has_b_ih"] = b_ih.has_value() && b_ih->defined();
  ctx->saved_data["has_b_hh"] = b_hh.has_value() && b_hh->defined();
}

std::optional<at::Tensor> opt(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// The cell arguments (input, hx, w_ih, w_hh, b_ih, b_hh) a double backward differentiates.
std::vector<at::Tensor> cell_args(const variable_list& s, size_t first_bias) {
  return {s[0], s[1], s[2], s[3], s[first_bias], s[first_bias + 1]};
}

std::vector<bool> needed_args(AutogradContext* ctx) {
  std::vector<bool> needed;
  for (size_t i = 0; i < 6; ++i) needed.push_back(ctx->needs_input_grad(i));
  return needed;
}

// Differentiable recomputations for create_graph=True (torch's formulas and gate order).
at::Tensor gru_cell_recomputed(const std::vector<at::Tensor>& a) {
  auto gi = at::linear(a[0], a[2], opt(a[4])).chunk(3, 1);
  auto gh = at::linear(a[1], a[3], opt(a[5])).chunk(3, 1);
  auto r = at::sigmoid(gi[0] + gh[0]), z = at::sigmoid(gi[1] + gh[1]);
  auto n = at::tanh(gi[2] + r * gh[2]);
  return (a[1] - n) * z + n;
}

at::Tensor rnn_cell_recomputed(const std::vector<at::Tensor>& a, const std::string& nonlinearity) {
  auto pre = at::linear(a[0], a[2], opt(a[4])) + at::linear(a[1], a[3], opt(a[5]));
  return nonlinearity == "relu" ? at::relu(pre) : at::tanh(pre);
}

variable_list with_extra(std::vector<at::Tensor> g, size_t extra_args) {
  g.resize(g.size() + extra_args);
  return g;
}

// Maps the layer backward's {dx [1, B, I], dh, dw_ih, dw_hh, db_ih, db_hh} onto the cell's
// arguments (undefined where no gradient is wanted or the argument is absent).
variable_list cell_grads(AutogradContext* ctx, std::vector<at::Tensor> g, bool need_x, bool need_h,
                         size_t extra_args) {
  variable_list out{need_x ? g[0].squeeze(0) : at::Tensor(), need_h ? g[1] : at::Tensor(), g[2], g[3],
                    ctx->saved_data["has_b_ih"].toBool() ? g[4] : at::Tensor(),
                    ctx->saved_data["has_b_hh"].toBool() ? g[5] : at::Tensor()};
  return with_extra(std::move(out), extra_args);
}

struct GruCellFunction : torch::autograd::Function<GruCellFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& hx,
                            const at::Tensor& w_ih, const at::Tensor& w_hh,
                            const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh) {
    auto [h_new, ws] = gru_cell_forward(input, hx, w_ih, w_hh, b_ih, b_hh, /*need_workspace=*/true);
    // Biases saved (as references) only for a double backward's recomputation.
    ctx->save_for_backward({input, hx, w_ih, w_hh, h_new, ws, b_ih.value_or(at::Tensor()),
                            b_hh.value_or(at::Tensor())});
    save_bias_flags(ctx, b_ih, b_hh);
    return h_new;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const bool need_x = ctx->needs_input_grad(0), need_h = ctx->needs_input_grad(1);
    if (at::GradMode::is_enabled()) {  // create_graph=True: gradients must be differentiable
      const auto args = cell_args(s, 6);
      return grad_through({gru_cell_recomputed(args)}, {grads[0]}, args, needed_args(ctx));
    }
    auto g = gru_backward(grads[0].unsqueeze(0), at::zeros_like(s[1]), s[0].unsqueeze(0), s[1], s[2], s[3],
                          s[4].unsqueeze(0), s[5].unsqueeze(0), std::nullopt, false, need_x, need_h);
    return cell_grads(ctx, std::move(g), need_x, need_h, 0);
  }
};

struct RnnCellFunction : torch::autograd::Function<RnnCellFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& hx,
                            const at::Tensor& w_ih, const at::Tensor& w_hh,
                            const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
                            const std::string& nonlinearity) {
    at::Tensor h_new = rnn_cell_forward(input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity);
    ctx->save_for_backward({input, hx, w_ih, w_hh, h_new, b_ih.value_or(at::Tensor()),
                            b_hh.value_or(at::Tensor())});
    save_bias_flags(ctx, b_ih, b_hh);
    ctx->saved_data["nonlinearity"] = nonlinearity;
    return h_new;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const bool need_x = ctx->needs_input_grad(0), need_h = ctx->needs_input_grad(1);
    if (at::GradMode::is_enabled()) {  // create_graph=True: gradients must be differentiable
      const auto args = cell_args(s, 5);
      const auto& nonlinearity = ctx->saved_data["nonlinearity"].toStringRef();
      return with_extra(grad_through({rnn_cell_recomputed(args, nonlinearity)}, {grads[0]}, args,
                                     needed_args(ctx)), 1);
    }
    auto g = rnn_backward(grads[0].unsqueeze(0), at::zeros_like(s[1]), s[0].unsqueeze(0), s[1], s[2], s[3],
                          s[4].unsqueeze(0), std::nullopt, false, ctx->saved_data["nonlinearity"].toStringRef(),
                          need_x, need_h);
    return cell_grads(ctx, std::move(g), need_x, need_h, 1);
  }
};

}  // namespace

at::Tensor gru_cell(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh) {
  return GruCellFunction::apply(input, hx, w_ih, w_hh, b_ih, b_hh);
}

at::Tensor rnn_cell(const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
                    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
                    const std::string& nonlinearity) {
  return RnnCellFunction::apply(input, hx, w_ih, w_hh, b_ih, b_hh, nonlinearity);
}

}  // namespace fastseq
