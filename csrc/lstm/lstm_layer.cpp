// The device-generic LSTM sequence loops: the input projection of all timesteps as one GEMM,
// then per step one GEMM (h W_hh^T) and one fused pointwise pass; backward through time
// likewise, with the weight gradients as one GEMM each over all timesteps at the end.
#include "lstm/lstm_layer.h"

#include <ATen/ops/add.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include "common/gemm.h"
#include "recurrent/cpu_engine.h"

#include <utility>

namespace fastseq {
namespace lstm {
namespace {

// Rows active at step t: batch_sizes[t] for packed sequences, else all.
inline int64_t active_rows(const int64_t* batch_sizes, int64_t t, int64_t batch) {
  return batch_sizes ? batch_sizes[t] : batch;
}

template <class T = void>
inline T* row_ptr(const at::Tensor& t, int64_t offset_elems) {
  return static_cast<T*>(static_cast<char*>(t.data_ptr()) + offset_elems * t.element_size());
}

// dW_hh = sum_t dG[t]^T h_prev[t]. h_prev is the previous step's output for every active
// row except at a row's first step, where it is h0: one GEMM over the shifted outputs (rows
// newly active in a reverse packed pass meet zeros there) plus one with h0.
at::Tensor packed_d_w_hh(const at::Tensor& dgates, const at::Tensor& output, const at::Tensor& h0,
                         const int64_t* batch_sizes, bool reverse) {
  const int64_t T = dgates.size(0), B = dgates.size(1), G = dgates.size(2), P = output.size(2);
  at::Tensor d_w_hh;
  if (T > 1) {
    at::Tensor dg_shift = reverse ? dgates.narrow(0, 0, T - 1) : dgates.narrow(0, 1, T - 1);
    at::Tensor out_shift = reverse ? output.narrow(0, 1, T - 1) : output.narrow(0, 0, T - 1);
    d_w_hh = matmul_tn(dg_shift.reshape({(T - 1) * B, G}), out_shift.reshape({(T - 1) * B, P}));
  }
  at::Tensor dg_first;
  if (!batch_sizes || !reverse) {
    dg_first = dgates.select(0, reverse ? T - 1 : 0);
  } else {
    dg_first = at::empty({B, G}, dgates.options());
    for (int64_t t = T - 1; t >= 0; --t) {
      const int64_t lo = t + 1 < T ? batch_sizes[t + 1] : 0, hi = batch_sizes[t];
      if (hi > lo) dg_first.narrow(0, lo, hi - lo).copy_(dgates.select(0, t).narrow(0, lo, hi - lo));
    }
  }
  at::Tensor d_w_hh_first = matmul_tn(dg_first, h0);
  return d_w_hh.defined() ? d_w_hh.add_(d_w_hh_first) : d_w_hh_first;
}

}  // namespace

bool saved_float32_for_backward(const at::Tensor& input, const at::Tensor& gates, bool proj) {
  return input.is_cpu() && input.scalar_type() == at::kBFloat16 && gates.scalar_type() == at::kFloat && !proj;
}

std::vector<at::Tensor> layer_forward(const Pointwise& pw, const at::Tensor& input,
                                      const at::Tensor& h0, const at::Tensor& c0,
                                      const at::Tensor& w_ih, const at::Tensor& w_hh,
                                      const std::optional<at::Tensor>& bias,
                                      const std::optional<at::Tensor>& w_hr,
                                      const int64_t* batch_sizes, bool reverse,
                                      bool save_for_backward) {
  const int64_t T = input.size(0), B = input.size(1), I = input.size(2);
  const int64_t H = c0.size(1), P = h0.size(1), G = 4 * H;
  const bool proj = w_hr.has_value();
  const auto opts = input.options();

  at::Tensor output = batch_sizes ? at::zeros({T, B, P}, opts) : at::empty({T, B, P}, opts);
  // bfloat16 on the engine saves the gates and cell states in float32 (what the float32
  // pointwise math of its backward steps reads): saved_float32_for_backward.
  const bool bf16_engine = !proj && recurrent::engine_runs_bfloat16(input, H);
  const auto saved_opts = bf16_engine ? opts.dtype(at::kFloat) : opts;
  at::Tensor cells = save_for_backward ? at::empty({T, B, H}, saved_opts) : at::empty({0}, saved_opts);
  at::Tensor c_state = c0.clone(at::MemoryFormat::Contiguous);
  if (!proj && recurrent::engine_runs(input, H)) {
    // The sequence engine: the input projection and every step (recurrent/cpu_engine.h).
    at::Tensor h_buf = at::empty({2, B, H}, opts);
    h_buf.select(0, 0).copy_(h0);
    const recurrent::ForwardRun run{recurrent::CellKind::kLstm, T, B, H, batch_sizes, reverse,
                                    h_buf.data_ptr(), c_state.data_ptr(), output.data_ptr(),
                                    save_for_backward ? cells.data_ptr() : nullptr, nullptr};
    at::Tensor gates = recurrent::forward_sequence(run, input.contiguous(), w_ih.contiguous(), w_hh,
                                                   bias ? bias->contiguous() : at::Tensor(), save_for_backward);
    at::Tensor h_n = h_buf.select(0, T % 2).clone();
    if (!save_for_backward) return {output, h_n, c_state, at::empty({0}, opts), cells};
    return {output, h_n, c_state, gates, cells};
  }
  // All timesteps' input projections (plus both biases) in one GEMM; each step adds its
  // recurrent term and leaves the activated gates there for backward. Inference needs no
  // history, so it projects chunks of steps (recurrent::kChunkBytes) into one buffer.
  at::Tensor x2d = input.contiguous().view({T * B, I});
  const int64_t chunk = save_for_backward
                            ? T
                            : std::max<int64_t>(1, recurrent::kChunkBytes /
                                                       std::max<int64_t>(1, B * G * input.element_size()));
  at::Tensor gates;
  int64_t chunk_lo = 0, chunk_hi = 0;  // the steps [chunk_lo, chunk_hi) held in `gates`
  if (save_for_backward) {
    gates = linear_nt(x2d, w_ih, bias);
    chunk_hi = T;
  }
  auto gates_at = [&](int64_t t) -> void* {
    if (t < chunk_lo || t >= chunk_hi) {
      chunk_lo = reverse ? std::max<int64_t>(0, t - chunk + 1) : t;
      chunk_hi = reverse ? t + 1 : std::min<int64_t>(T, t + chunk);
      gates = linear_nt(x2d.narrow(0, chunk_lo * B, (chunk_hi - chunk_lo) * B), w_ih, bias);
    }
    return row_ptr(gates, (t - chunk_lo) * B * G);
  };

  at::Tensor h_state = h0.clone(at::MemoryFormat::Contiguous);
  at::Tensor h_pre = proj ? at::empty({B, H}, opts) : at::Tensor();

  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = reverse ? T - 1 - s : s;
    const int64_t rows = active_rows(batch_sizes, t, B);
    if (rows > 0) {
      at::Tensor recurrent = linear_nt(h_state.narrow(0, 0, rows), w_hh);
      ForwardStep step{gates_at(t),
                       recurrent.data_ptr(),
                       c_state.data_ptr(),
                       c_state.data_ptr(),
                       save_for_backward ? row_ptr(cells, t * B * H) : nullptr,
                       proj ? h_pre.data_ptr() : row_ptr(output, t * B * P),
                       proj ? nullptr : h_state.data_ptr(),
                       rows,
                       H};
      pw.forward(step, input.scalar_type());
      if (proj) {
        at::Tensor h_t = linear_nt(h_pre.narrow(0, 0, rows), *w_hr);
        output.select(0, t).narrow(0, 0, rows).copy_(h_t);
        h_state.narrow(0, 0, rows).copy_(h_t);
      }
    }
    if (rows < B && save_for_backward) {
      // Inactive rows carry their cell state, so `cells` of the previous step is always
      // the c_prev of the next one (backward relies on it).
      cells.select(0, t).narrow(0, rows, B - rows).copy_(c_state.narrow(0, rows, B - rows));
    }
  }
  if (!save_for_backward) return {output, h_state, c_state, at::empty({0}, opts), cells};
  return {output, h_state, c_state, gates.view({T, B, G}), cells};
}

std::vector<at::Tensor> layer_backward(const Pointwise& pw, const at::Tensor& grad_output,
                                       const at::Tensor& grad_h_n, const at::Tensor& grad_c_n,
                                       const at::Tensor& input, const at::Tensor& h0,
                                       const at::Tensor& c0, const at::Tensor& w_ih,
                                       const at::Tensor& w_hh, const std::optional<at::Tensor>& w_hr,
                                       const int64_t* batch_sizes, bool reverse, bool has_bias,
                                       const at::Tensor& output, const at::Tensor& gates,
                                       const at::Tensor& cells, bool need_d_input) {
  const int64_t T = input.size(0), B = input.size(1), I = input.size(2);
  const int64_t H = c0.size(1), P = h0.size(1), G = 4 * H;
  const bool proj = w_hr.has_value();
  const auto opts = input.options();
  // bfloat16 from the engine (float32 gates and cells, see layer_forward): the engine's
  // bfloat16 backward steps, with the states' gradients in float32 and dG in bfloat16.
  const bool bf16_steps = saved_float32_for_backward(input, gates, proj);
  const auto state_tensor = [&](const at::Tensor& t) {
    return bf16_steps ? t.to(at::kFloat, /*non_blocking=*/false, /*copy=*/true).contiguous()
                      : t.clone(at::MemoryFormat::Contiguous);
  };

  // Inactive rows must contribute exactly zero to the weight GEMMs, hence zeros there.
  at::Tensor dgates = batch_sizes ? at::zeros({T, B, G}, opts) : at::empty({T, B, G}, opts);
  at::Tensor dh_state = state_tensor(grad_h_n);
  at::Tensor dc_state = state_tensor(grad_c_n);
  at::Tensor c0c = bf16_steps ? c0.to(at::kFloat).contiguous() : c0.contiguous();
  at::Tensor dout = grad_output.contiguous();  // the bfloat16 steps read it in bfloat16 too
  at::Tensor dh_proj, h_pre_all, dh_pre;
  if (proj) {
    dh_proj = batch_sizes ? at::zeros({T, B, P}, opts) : at::empty({T, B, P}, opts);
    h_pre_all = batch_sizes ? at::zeros({T, B, H}, opts) : at::empty({T, B, H}, opts);
  }

  const bool engine = bf16_steps || (!proj && recurrent::engine_supports(input));
  at::Tensor packed = bf16_steps ? recurrent::pack_backward_weight_bfloat16(w_hh)
                      : engine   ? recurrent::pack_backward_weight(w_hh)
                                 : at::Tensor();
  if (engine) {  // the sequence engine: every step in one parallel region
    recurrent::BackwardRun run{recurrent::CellKind::kLstm, T, B, H, batch_sizes, reverse, 0, T,
                               /*need_last_dh=*/true, dout.data_ptr(), dh_state.data_ptr(),
                               dc_state.data_ptr(), gates.data_ptr(), cells.data_ptr(),
                               c0c.data_ptr(), nullptr, nullptr, nullptr, dgates.data_ptr(),
                               dgates.data_ptr(), 0, &packed};
    if (bf16_steps) recurrent::backward_bfloat16(run, packed);
    else recurrent::run_backward(run, input.scalar_type());
  }

  for (int64_t s = 0; s < T && !engine; ++s) {
    const int64_t t = reverse ? s : T - 1 - s;  // the forward order, undone
    const int64_t rows = active_rows(batch_sizes, t, B);
    if (rows == 0) continue;
    const int64_t t_prev = reverse ? t + 1 : t - 1;
    const void* c_prev = (t_prev >= 0 && t_prev < T) ? row_ptr(cells, t_prev * B * H) : c0c.data_ptr();
    at::Tensor dgates_t = dgates.select(0, t).narrow(0, 0, rows);
    BackwardStep step{row_ptr(gates, t * B * G), row_ptr(cells, t * B * H), c_prev,
                      nullptr, nullptr, dc_state.data_ptr(), dgates_t.data_ptr(), nullptr,
                      rows, H};
    if (proj) {
      at::Tensor dhp_t = dh_proj.select(0, t).narrow(0, 0, rows);
      at::add_out(dhp_t, dout.select(0, t).narrow(0, 0, rows), dh_state.narrow(0, 0, rows));
      dh_pre = matmul(dhp_t, *w_hr);
      step.dh = dh_pre.data_ptr();
      step.h_pre = row_ptr(h_pre_all, t * B * H);
    } else {
      step.dh = row_ptr(dout, t * B * P);
      step.dh2 = dh_state.data_ptr();
    }
    pw.backward(step, input.scalar_type());
    dh_state.narrow(0, 0, rows).copy_(matmul(dgates_t, w_hh));
  }

  at::Tensor dgates2d = dgates.view({T * B, G});
  at::Tensor x2d = input.contiguous().view({T * B, I});
  at::Tensor d_input = need_d_input ? matmul(dgates2d, w_ih).view({T, B, I}) : at::empty({0}, opts);
  // Two GEMMs over dG (one per weight) rather than one over [x_t | h_{t-1}] side by side:
  // that concatenation was a [T, B, I + P] copy (65 MB for T=500, B=32, I=256, P=512),
  // while reading dG twice costs a few ms against the GEMMs' hundreds.
  at::Tensor d_w_ih = matmul_tn(dgates2d, x2d);
  at::Tensor d_w_hh = packed_d_w_hh(dgates, output, h0, batch_sizes, reverse);

  // The bias gradient sums in float32 for bfloat16 (ATen's sum of bfloat16 does too).
  at::Tensor d_bias = has_bias ? dgates2d.sum(0) : at::empty({0}, opts);
  if (bf16_steps) {
    dh_state = dh_state.to(input.scalar_type());
    dc_state = dc_state.to(input.scalar_type());
  }
  at::Tensor d_w_hr = proj ? matmul_tn(dh_proj.view({T * B, P}), h_pre_all.view({T * B, H}))
                           : at::empty({0}, opts);
  return {d_input, dh_state, dc_state, d_w_ih, d_w_hh, d_bias, d_w_hr};
}

std::vector<at::Tensor> cell_forward(const Pointwise& pw, const at::Tensor& input,
                                     const at::Tensor& h, const at::Tensor& c,
                                     const at::Tensor& w_ih, const at::Tensor& w_hh,
                                     const std::optional<at::Tensor>& bias) {
  const int64_t B = input.size(0), H = c.size(1);
  // A decoder step has few rows, and oneDNN (linear_nt) re-lays out the whole weight on
  // every call: below ~32 rows that costs more than its faster kernel saves, so ATen's
  // addmm accumulates both products into one buffer instead.
  constexpr int64_t kOnednnMinRows = 32;
  at::Tensor gates, recurrent;
  if (B < kOnednnMinRows) {
    gates = bias ? at::addmm(*bias, input, w_ih.t()) : at::mm(input, w_ih.t());
    gates.addmm_(h, w_hh.t());
  } else {
    gates = linear_nt(input, w_ih, bias);
    recurrent = linear_nt(h, w_hh);
  }
  at::Tensor c_prev = c.contiguous();
  at::Tensor h_next = at::empty({B, H}, input.options());
  at::Tensor c_next = at::empty({B, H}, input.options());
  ForwardStep step{gates.data_ptr(), recurrent.defined() ? recurrent.data_ptr() : nullptr,
                   c_prev.data_ptr(), c_next.data_ptr(), nullptr, h_next.data_ptr(), nullptr, B, H};
  pw.forward(step, input.scalar_type());
  return {h_next, c_next, gates};
}

std::vector<at::Tensor> cell_backward(const Pointwise& pw, const at::Tensor& grad_h_next,
                                      const at::Tensor& grad_c_next, const at::Tensor& input,
                                      const at::Tensor& h, const at::Tensor& c,
                                      const at::Tensor& w_ih, const at::Tensor& w_hh,
                                      bool has_bias, const at::Tensor& gates,
                                      const at::Tensor& c_next, bool need_d_input, bool need_d_h) {
  const int64_t B = input.size(0), H = c.size(1);
  at::Tensor dgates = at::empty({B, 4 * H}, input.options());
  at::Tensor dc = grad_c_next.clone(at::MemoryFormat::Contiguous);
  at::Tensor dh = grad_h_next.contiguous();
  at::Tensor c_prev = c.contiguous();
  BackwardStep step{gates.data_ptr(), c_next.data_ptr(), c_prev.data_ptr(), dh.data_ptr(),
                    nullptr, dc.data_ptr(), dgates.data_ptr(), nullptr, B, H};
  pw.backward(step, input.scalar_type());
  const auto empty = [&] { return at::empty({0}, input.options()); };
  at::Tensor d_bias = has_bias ? dgates.sum(0) : empty();
  // The input / state GEMMs are half the work; a decoder often needs neither (e.g. the
  // first step, or inputs that are data), so they are skipped when not wanted.
  return {need_d_input ? matmul(dgates, w_ih) : empty(), need_d_h ? matmul(dgates, w_hh) : empty(),
          dc, matmul_tn(dgates, input), matmul_tn(dgates, h), d_bias};
}

}  // namespace lstm
}  // namespace fastseq
