// Entry points of the fused GRU / RNN: input checks (each naming the argument, the
// expected and the received value), then dispatch by device to the CPU or CUDA backend.
#include "gru_rnn/gru_rnn.h"

#include <ATen/OpMathType.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/zeros.h>
#include <c10/core/DeviceGuard.h>

#include "common/checks.h"
#include "gru_rnn/gru_rnn_loops.h"

namespace fastseq {
namespace {

using gru_rnn::PointwiseBackend;
using gru_rnn::SequencePlan;

const PointwiseBackend& backend_for(const at::Tensor& t) {
#ifdef FASTSEQ_WITH_CUDA
  if (t.is_cuda()) return gru_rnn::cuda_backend();
#endif
  return gru_rnn::cpu_backend();
}

void check_dtype_supported(const at::Tensor& t, const char* op) {
  const auto d = t.scalar_type();
  if (t.is_cpu()) {
    TORCH_CHECK(d == at::kFloat || d == at::kDouble || d == at::kBFloat16, op,
                ": input on cpu must be float32, float64 or bfloat16, got ", d);
  } else {
    TORCH_CHECK(d == at::kFloat || d == at::kDouble || d == at::kHalf || d == at::kBFloat16, op,
                ": input on cuda must be float32, float64, float16 or bfloat16, got ", d);
  }
}

// Checks shared by forward and backward. gates = 3 for GRU, 1 for RNN.
void check_layer_inputs(const char* op, int64_t gates, const at::Tensor& input, const at::Tensor& hx,
                        const at::Tensor& w_ih, const at::Tensor& w_hh,
                        const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh) {
  check_device_supported(input, op, "input");
  check_floating(input, op, "input");
  check_dtype_supported(input, op);
  check_dim(input, op, "input", 3);
  check_dim(hx, op, "hx", 2);
  const int64_t B = input.size(1), I = input.size(2), H = hx.size(1);
  check_shape(hx, op, "hx", {B, -1});
  check_shape(w_ih, op, "w_ih", {gates * H, I});
  check_shape(w_hh, op, "w_hh", {gates * H, H});
  const std::pair<const char*, const at::Tensor*> named[] = {
      {"hx", &hx}, {"w_ih", &w_ih}, {"w_hh", &w_hh},
      {"b_ih", b_ih ? &*b_ih : nullptr}, {"b_hh", b_hh ? &*b_hh : nullptr}};
  for (const auto& [name, t] : named) {
    if (!t) continue;
    check_same_device(*t, input, op, name, "input");
    check_same_dtype(*t, input, op, name, "input");
  }
  if (b_ih) check_shape(*b_ih, op, "b_ih", {gates * H});
  if (b_hh) check_shape(*b_hh, op, "b_hh", {gates * H});
}

SequencePlan make_plan(const char* op, const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes,
                       bool reverse) {
  const int64_t T = input.size(0), B = input.size(1);
  SequencePlan plan{std::vector<int64_t>(T, B), false, reverse};
  if (!batch_sizes) return plan;
  const at::Tensor& bs = *batch_sizes;
  TORCH_CHECK(bs.is_cpu() && bs.scalar_type() == at::kLong, op,
              ": batch_sizes must be an int64 cpu tensor (as in PackedSequence), got ", bs.scalar_type(),
              " on ", bs.device());
  check_shape(bs, op, "batch_sizes", {T});
  const at::Tensor c = bs.contiguous();
  const int64_t* v = c.data_ptr<int64_t>();
  for (int64_t t = 0; t < T; ++t) {
    TORCH_CHECK(v[t] >= 0 && v[t] <= B, op, ": batch_sizes[", t, "] must be in [0, ", B, "], got ", v[t]);
    TORCH_CHECK(t == 0 || v[t] <= v[t - 1], op, ": batch_sizes must be non-increasing, got ", v[t - 1],
                " then ", v[t], " at step ", t);
    plan.rows[t] = v[t];
    plan.packed = plan.packed || v[t] < B;
  }
  return plan;
}

at::Tensor bias_or_zeros(const std::optional<at::Tensor>& b, const at::Tensor& like, int64_t n) {
  return b ? b->contiguous() : at::zeros({n}, like.options());
}

bool nonlinearity_is_relu(const char* op, const std::string& nonlinearity) {
  TORCH_CHECK(nonlinearity == "tanh" || nonlinearity == "relu", op,
              ": nonlinearity must be 'tanh' or 'relu', got '", nonlinearity, "'");
  return nonlinearity == "relu";
}

void check_backward_inputs(const char* op, const at::Tensor& grad_output, const at::Tensor& grad_hy,
                           const at::Tensor& input, const at::Tensor& hx, const at::Tensor& output) {
  const int64_t T = input.size(0), B = input.size(1), H = hx.size(1);
  check_shape(grad_output, op, "grad_output", {T, B, H});
  check_shape(grad_hy, op, "grad_hy", {B, H});
  check_shape(output, op, "output", {T, B, H});
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"grad_output", &grad_output},
                                {"grad_hy", &grad_hy}, {"output", &output}}) {
    check_same_device(*t, input, op, name, "input");
    check_same_dtype(*t, input, op, name, "input");
  }
}

// A cell's input is one step: checked as the T = 1 case of a layer.
void check_cell_inputs(const char* op, int64_t gates, const at::Tensor& input, const at::Tensor& hx,
                       const at::Tensor& w_ih, const at::Tensor& w_hh,
                       const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh) {
  check_dim(input, op, "input", 2);
  check_layer_inputs(op, gates, input.unsqueeze(0), hx, w_ih, w_hh, b_ih, b_hh);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> gru_cell_forward(
    const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh, bool need_workspace) {
  const char* op = "fastseq.gru_cell_forward";
  check_cell_inputs(op, 3, input, hx, w_ih, w_hh, b_ih, b_hh);
  c10::OptionalDeviceGuard guard(input.device());
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const int64_t H = hx.size(1);
  return gru_rnn::gru_cell_forward_impl(backend_for(input), input.contiguous(), hx.contiguous(), w_ih, w_hh,
                                        bias_or_zeros(b_ih, input, 3 * H), bias_or_zeros(b_hh, input, 3 * H),
                                        need_workspace);
}

at::Tensor rnn_cell_forward(
    const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh, const std::string& nonlinearity) {
  const char* op = "fastseq.rnn_cell_forward";
  const bool relu = nonlinearity_is_relu(op, nonlinearity);
  check_cell_inputs(op, 1, input, hx, w_ih, w_hh, b_ih, b_hh);
  c10::OptionalDeviceGuard guard(input.device());
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const int64_t H = hx.size(1);
  return gru_rnn::rnn_cell_forward_impl(backend_for(input), input.contiguous(), hx.contiguous(), w_ih, w_hh,
                                        bias_or_zeros(b_ih, input, H), bias_or_zeros(b_hh, input, H), relu);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_forward(
    const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& batch_sizes, bool reverse, bool need_workspace) {
  const char* op = "fastseq.gru_forward";
  check_layer_inputs(op, 3, input, hx, w_ih, w_hh, b_ih, b_hh);
  const SequencePlan plan = make_plan(op, input, batch_sizes, reverse);
  c10::OptionalDeviceGuard guard(input.device());
  // The autograd formula is fastseq's own (fastseq.ops); the ATen calls inside need none.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const int64_t H = hx.size(1);
  return gru_rnn::gru_forward_loop(backend_for(input), input.contiguous(), hx.contiguous(), w_ih.contiguous(),
                                   w_hh.contiguous(), bias_or_zeros(b_ih, input, 3 * H),
                                   bias_or_zeros(b_hh, input, 3 * H), plan, need_workspace);
}

std::vector<at::Tensor> gru_backward(
    const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& input,
    const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const at::Tensor& output, const at::Tensor& workspace,
    const std::optional<at::Tensor>& batch_sizes, bool reverse, bool need_input_grad, bool need_hx_grad) {
  const char* op = "fastseq.gru_backward";
  check_layer_inputs(op, 3, input, hx, w_ih, w_hh, std::nullopt, std::nullopt);
  check_backward_inputs(op, grad_output, grad_hy, input, hx, output);
  const int64_t T = input.size(0), B = input.size(1), H = hx.size(1);
  check_shape(workspace, op, "workspace", {T, B, 4 * H});
  TORCH_CHECK(workspace.scalar_type() == at::toOpMathType(input.scalar_type()), op,
              ": workspace must have dtype ", at::toOpMathType(input.scalar_type()), " (from a forward with "
              "need_workspace=True), got ", workspace.scalar_type());
  check_same_device(workspace, input, op, "workspace", "input");
  const SequencePlan plan = make_plan(op, input, batch_sizes, reverse);
  c10::OptionalDeviceGuard guard(input.device());
  // The autograd formula is fastseq's own (fastseq.ops); the ATen calls inside need none.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return gru_rnn::gru_backward_loop(backend_for(input), grad_output.contiguous(), grad_hy.contiguous(),
                                    input.contiguous(), hx.contiguous(), w_ih.contiguous(), w_hh.contiguous(),
                                    output.contiguous(), workspace.contiguous(), plan, need_input_grad, need_hx_grad);
}

std::tuple<at::Tensor, at::Tensor> rnn_forward(
    const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& batch_sizes, bool reverse, const std::string& nonlinearity) {
  const char* op = "fastseq.rnn_forward";
  const bool relu = nonlinearity_is_relu(op, nonlinearity);
  check_layer_inputs(op, 1, input, hx, w_ih, w_hh, b_ih, b_hh);
  const SequencePlan plan = make_plan(op, input, batch_sizes, reverse);
  c10::OptionalDeviceGuard guard(input.device());
  // The autograd formula is fastseq's own (fastseq.ops); the ATen calls inside need none.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const int64_t H = hx.size(1);
  return gru_rnn::rnn_forward_loop(backend_for(input), input.contiguous(), hx.contiguous(), w_ih.contiguous(),
                                   w_hh.contiguous(), bias_or_zeros(b_ih, input, H), bias_or_zeros(b_hh, input, H),
                                   plan, relu);
}

std::vector<at::Tensor> rnn_backward(
    const at::Tensor& grad_output, const at::Tensor& grad_hy, const at::Tensor& input,
    const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const at::Tensor& output, const std::optional<at::Tensor>& batch_sizes, bool reverse,
    const std::string& nonlinearity, bool need_input_grad, bool need_hx_grad) {
  const char* op = "fastseq.rnn_backward";
  const bool relu = nonlinearity_is_relu(op, nonlinearity);
  check_layer_inputs(op, 1, input, hx, w_ih, w_hh, std::nullopt, std::nullopt);
  check_backward_inputs(op, grad_output, grad_hy, input, hx, output);
  const SequencePlan plan = make_plan(op, input, batch_sizes, reverse);
  c10::OptionalDeviceGuard guard(input.device());
  // The autograd formula is fastseq's own (fastseq.ops); the ATen calls inside need none.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return gru_rnn::rnn_backward_loop(backend_for(input), grad_output.contiguous(), grad_hy.contiguous(),
                                    input.contiguous(), hx.contiguous(), w_ih.contiguous(), w_hh.contiguous(),
                                    output.contiguous(), plan, relu, need_input_grad, need_hx_grad);
}

}  // namespace fastseq
