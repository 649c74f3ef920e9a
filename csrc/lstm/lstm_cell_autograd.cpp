// Autograd-aware LSTMCell step as a C++ autograd Function: decoder loops call the cell once
// per step, and a C++ autograd node costs a fraction of a Python torch.autograd.Function
// (apply, setup_context and the backward call) at these step sizes.
#include <torch/csrc/autograd/custom_function.h>

#include "lstm/lstm.h"

namespace fastseq {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct LstmCellFunction : torch::autograd::Function<LstmCellFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& h,
                               const at::Tensor& c, const at::Tensor& w_ih, const at::Tensor& w_hh,
                               const std::optional<at::Tensor>& b_ih,
                               const std::optional<at::Tensor>& b_hh) {
    auto out = lstm_cell_forward(input, h, c, w_ih, w_hh, b_ih, b_hh);  // {h', c', gates}
    ctx->save_for_backward({input, h, c, w_ih, w_hh, out[2], out[1]});
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
