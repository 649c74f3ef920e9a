// LSTM entry points of fastseq._C: input checks (each naming the argument, expected and
// actual), the device guard, and the choice of the per-device pointwise passes.
#include "lstm/lstm.h"

#include <ATen/ops/add.h>
#include <ATen/ops/zeros.h>
#include <c10/core/DeviceGuard.h>

#include "common/checks.h"
#include "lstm/lstm_layer.h"

namespace fastseq {
namespace {

lstm::Pointwise pointwise_for(const at::Tensor& t) {
  if (t.is_cuda()) {
#ifdef FASTSEQ_WITH_CUDA
    return {&lstm::forward_step_cuda, &lstm::backward_step_cuda};
#endif
  }
  return {&lstm::forward_step_cpu, &lstm::backward_step_cpu};
}

void check_dtype_supported(const at::Tensor& t, const char* op) {
  const auto st = t.scalar_type();
  if (t.is_cuda()) {
    TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
                op, ": input must be float32, float64, float16 or bfloat16 on CUDA, got ", st);
  } else {
    TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kBFloat16, op,
                ": input must be float32, float64 or bfloat16 on CPU, got ", st);
  }
}

// Every tensor argument: known device, floating, same dtype and device as input.
void check_common(const char* op, const at::Tensor& input,
                  std::initializer_list<std::pair<const char*, const at::Tensor*>> others) {
  check_device_supported(input, op, "input");
  check_floating(input, op, "input");
  check_dtype_supported(input, op);
  for (const auto& [name, t] : others) {
    check_same_device(*t, input, op, name, "input");
    check_same_dtype(*t, input, op, name, "input");
  }
}

std::optional<at::Tensor> combined_bias(const std::optional<at::Tensor>& b_ih,
                                        const std::optional<at::Tensor>& b_hh) {
  if (b_ih && b_hh) return at::add(*b_ih, *b_hh);
  if (b_ih) return *b_ih;
  if (b_hh) return *b_hh;
  return std::nullopt;
}

const int64_t* checked_batch_sizes(const std::optional<at::Tensor>& batch_sizes, int64_t T,
                                   int64_t B, const char* op) {
  if (!batch_sizes) return nullptr;
  const at::Tensor& bs = *batch_sizes;
  TORCH_CHECK(bs.device().is_cpu() && bs.scalar_type() == at::kLong, op,
              ": batch_sizes must be an int64 CPU tensor (as in PackedSequence), got ",
              bs.scalar_type(), " on ", bs.device());
  check_shape(bs, op, "batch_sizes", {T});
  TORCH_CHECK(bs.is_contiguous(), op, ": batch_sizes must be contiguous");
  const int64_t* p = bs.data_ptr<int64_t>();
  for (int64_t t = 0; t < T; ++t) {
    TORCH_CHECK(p[t] >= 0 && p[t] <= B, op, ": batch_sizes[", t, "] must be in [0, ", B,
                "] (the batch size of input), got ", p[t]);
    TORCH_CHECK(t == 0 || p[t] <= p[t - 1], op,
                ": batch_sizes must be non-increasing (sequences sorted by length), got ",
                p[t - 1], " then ", p[t], " at step ", t);
  }
  return p;
}

at::Tensor grad_or_zeros(const std::optional<at::Tensor>& g, at::IntArrayRef sizes,
                         const at::Tensor& like, const char* op, const char* name) {
  if (!g || !g->defined()) return at::zeros(sizes, like.options());
  TORCH_CHECK(g->sizes() == sizes, op, ": ", name, " must have shape ", shape_str(sizes),
              ", got ", shape_str(g->sizes()));
  check_same_device(*g, like, op, name, "input");
  check_same_dtype(*g, like, op, name, "input");
  return *g;
}

struct LayerShape {
  int64_t T, B, I, H, P;
};

LayerShape check_layer_args(const char* op, const at::Tensor& input, const at::Tensor& h0,
                            const at::Tensor& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
                            const std::optional<at::Tensor>& b_ih,
                            const std::optional<at::Tensor>& b_hh,
                            const std::optional<at::Tensor>& w_hr) {
  check_device_supported(input, op, "input");
  check_dim(input, op, "input", 3);
  check_dim(c0, op, "c0", 2);
  check_dim(w_hh, op, "w_hh", 2);
  LayerShape s{input.size(0), input.size(1), input.size(2), c0.size(1), 0};
  s.P = w_hr ? w_hr->size(0) : s.H;
  check_common(op, input, {{"h0", &h0}, {"c0", &c0}, {"w_ih", &w_ih}, {"w_hh", &w_hh}});
  check_shape(c0, op, "c0", {s.B, s.H});
  check_shape(h0, op, "h0", {s.B, s.P});
  check_shape(w_ih, op, "w_ih", {4 * s.H, s.I});
  check_shape(w_hh, op, "w_hh", {4 * s.H, s.P});
  for (const auto& [name, b] : {std::pair{"b_ih", &b_ih}, std::pair{"b_hh", &b_hh}}) {
    if (!*b) continue;
    check_common(op, input, {{name, &**b}});
    check_shape(**b, op, name, {4 * s.H});
  }
  if (w_hr) {
    check_common(op, input, {{"w_hr", &*w_hr}});
    check_shape(*w_hr, op, "w_hr", {s.P, s.H});
  }
  return s;
}

}  // namespace

std::vector<at::Tensor> lstm_layer_forward(
    const at::Tensor& input, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& w_hr,
    const std::optional<at::Tensor>& batch_sizes, bool reverse, bool save_for_backward) {
  const char* op = "lstm_layer_forward";
  const LayerShape s = check_layer_args(op, input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr);
  const int64_t* bs = checked_batch_sizes(batch_sizes, s.T, s.B, op);
  c10::DeviceGuard guard(input.device());
  return lstm::layer_forward(pointwise_for(input), input, h0, c0, w_ih, w_hh,
                             combined_bias(b_ih, b_hh), w_hr, bs, reverse, save_for_backward);
}

std::vector<at::Tensor> lstm_layer_backward(
    const std::optional<at::Tensor>& grad_output, const std::optional<at::Tensor>& grad_h_n,
    const std::optional<at::Tensor>& grad_c_n, const at::Tensor& input, const at::Tensor& h0,
    const at::Tensor& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& w_hr, const std::optional<at::Tensor>& batch_sizes,
    bool reverse, bool has_bias, const at::Tensor& output, const at::Tensor& gates,
    const at::Tensor& cells, bool need_d_input) {
  const char* op = "lstm_layer_backward";
  const LayerShape s = check_layer_args(op, input, h0, c0, w_ih, w_hh, std::nullopt,
                                        std::nullopt, w_hr);
  const int64_t* bs = checked_batch_sizes(batch_sizes, s.T, s.B, op);
  check_common(op, input, {{"output", &output}});
  if (lstm::saved_float32_for_backward(input, gates, w_hr.has_value())) {
    // what layer_forward saves for a bfloat16 input on the CPU engine
    TORCH_CHECK(cells.scalar_type() == at::kFloat, op, ": cells must be float32 like gates (a bfloat16 input's ",
                "saved state), got ", cells.scalar_type());
    check_same_device(gates, input, op, "gates", "input");
    check_same_device(cells, input, op, "cells", "input");
  } else {
    check_common(op, input, {{"gates", &gates}, {"cells", &cells}});
  }
  check_shape(output, op, "output", {s.T, s.B, s.P});
  check_shape(gates, op, "gates", {s.T, s.B, 4 * s.H});
  check_shape(cells, op, "cells", {s.T, s.B, s.H});
  c10::DeviceGuard guard(input.device());
  at::Tensor g_out = grad_or_zeros(grad_output, {s.T, s.B, s.P}, input, op, "grad_output");
  at::Tensor g_h = grad_or_zeros(grad_h_n, {s.B, s.P}, input, op, "grad_h_n");
  at::Tensor g_c = grad_or_zeros(grad_c_n, {s.B, s.H}, input, op, "grad_c_n");
  return lstm::layer_backward(pointwise_for(input), g_out, g_h, g_c, input, h0, c0, w_ih, w_hh,
                              w_hr, bs, reverse, has_bias, output.contiguous(),
                              gates.contiguous(), cells.contiguous(), need_d_input);
}

std::vector<at::Tensor> lstm_cell_forward(const at::Tensor& input, const at::Tensor& h,
                                          const at::Tensor& c, const at::Tensor& w_ih,
                                          const at::Tensor& w_hh,
                                          const std::optional<at::Tensor>& b_ih,
                                          const std::optional<at::Tensor>& b_hh) {
  const char* op = "lstm_cell_forward";
  check_device_supported(input, op, "input");
  check_dim(input, op, "input", 2);
  check_dim(c, op, "c", 2);
  const int64_t B = input.size(0), I = input.size(1), H = c.size(1);
  check_common(op, input, {{"h", &h}, {"c", &c}, {"w_ih", &w_ih}, {"w_hh", &w_hh}});
  check_shape(h, op, "h", {B, H});
  check_shape(c, op, "c", {B, H});
  check_shape(w_ih, op, "w_ih", {4 * H, I});
  check_shape(w_hh, op, "w_hh", {4 * H, H});
  for (const auto& [name, b] : {std::pair{"b_ih", &b_ih}, std::pair{"b_hh", &b_hh}}) {
    if (!*b) continue;
    check_common(op, input, {{name, &**b}});
    check_shape(**b, op, name, {4 * H});
  }
  c10::DeviceGuard guard(input.device());
  return lstm::cell_forward(pointwise_for(input), input, h, c, w_ih, w_hh, combined_bias(b_ih, b_hh));
}

std::vector<at::Tensor> lstm_cell_backward(
    const std::optional<at::Tensor>& grad_h_next, const std::optional<at::Tensor>& grad_c_next,
    const at::Tensor& input, const at::Tensor& h, const at::Tensor& c, const at::Tensor& w_ih,
    const at::Tensor& w_hh, bool has_bias, const at::Tensor& gates, const at::Tensor& c_next,
    bool need_d_input, bool need_d_h) {
  const char* op = "lstm_cell_backward";
  check_device_supported(input, op, "input");
  check_dim(input, op, "input", 2);
  check_dim(c, op, "c", 2);
  const int64_t B = input.size(0), I = input.size(1), H = c.size(1);
  check_common(op, input, {{"h", &h}, {"c", &c}, {"w_ih", &w_ih}, {"w_hh", &w_hh},
                           {"gates", &gates}, {"c_next", &c_next}});
  check_shape(h, op, "h", {B, H});
  check_shape(w_ih, op, "w_ih", {4 * H, I});
  check_shape(w_hh, op, "w_hh", {4 * H, H});
  check_shape(gates, op, "gates", {B, 4 * H});
  check_shape(c_next, op, "c_next", {B, H});
  c10::DeviceGuard guard(input.device());
  at::Tensor g_h = grad_or_zeros(grad_h_next, {B, H}, input, op, "grad_h_next");
  at::Tensor g_c = grad_or_zeros(grad_c_next, {B, H}, input, op, "grad_c_next");
  return lstm::cell_backward(pointwise_for(input), g_h, g_c, input, h, c, w_ih, w_hh, has_bias,
                             gates.contiguous(), c_next.contiguous(), need_d_input, need_d_h);
}

}  // namespace fastseq
