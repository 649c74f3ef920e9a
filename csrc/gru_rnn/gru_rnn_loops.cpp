// The time loops of the fused GRU / RNN, shared by CPU and CUDA. Forward: the input
// projection as one GEMM per chunk of steps, then per step one recurrent GEMM and one fused
// pointwise pass. Backward through time: per step one pointwise pass and one GEMM; the
// weight gradients and d input as one GEMM each per chunk of steps.
//
// Why chunks rather than whole-sequence buffers: a [T, B, 3H] buffer is tens of MB, above
// malloc's mmap threshold, so every call would get fresh pages from the OS and pay the page
// faults (measured ~25% of a large GRU's training step); a chunk of a few MB is reused from
// the heap (glibc raises its mmap threshold to the size of a freed chunk), and its GEMMs
// still have hundreds of rows.
#include "gru_rnn/gru_rnn_loops.h"

#include "common/gemm.h"
#include "recurrent/cpu_engine.h"

#include <ATen/OpMathType.h>
#include <ATen/ops/add.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <optional>

namespace fastseq {
namespace gru_rnn {
namespace {

// Time index of the s-th step in processing order.
inline int64_t step_time(const SequencePlan& plan, int64_t s, int64_t T) {
  return plan.reverse ? T - 1 - s : s;
}

inline int64_t chunk_steps(int64_t T, int64_t bytes_per_step) {
  return std::clamp<int64_t>(recurrent::kChunkBytes / std::max<int64_t>(bytes_per_step, 1), 1,
                             std::max<int64_t>(T, 1));
}

// First time index of the chunk holding processing steps [s_begin, s_begin + n).
inline int64_t chunk_first_time(const SequencePlan& plan, int64_t s_begin, int64_t n, int64_t T) {
  return plan.reverse ? T - s_begin - n : s_begin;
}

// Address of x[i] for a tensor contiguous in its leading dimension.
inline void* row_ptr(const at::Tensor& t, int64_t i) {
  return static_cast<char*>(t.data_ptr()) + i * t.stride(0) * t.element_size();
}

inline at::Tensor first_rows(const at::Tensor& t, int64_t rows) {
  return rows == t.size(0) ? t : t.narrow(0, 0, rows);
}

// Buffers whose inactive rows feed a GEMM or the caller must be zero when packed.
at::Tensor rows_buffer(at::IntArrayRef sizes, const at::TensorOptions& opts, bool packed) {
  return packed ? at::zeros(sizes, opts) : at::empty(sizes, opts);
}

// The CPU sequence engine (recurrent/cpu_engine.h) in place of the per-step loop: the input
// projection (bias folded into its epilogue) and every step. gx_bias and b_hn are in the
// compute dtype (float32 for a bfloat16 layer). Returns h_n.
at::Tensor engine_forward(recurrent::CellKind kind, const at::Tensor& x, const at::Tensor& h0,
                          const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& gx_bias,
                          const at::Tensor& b_hn, const SequencePlan& plan, at::Tensor& out,
                          void* saved) {
  const int64_t T = x.size(0), B = x.size(1), H = h0.size(1);
  at::Tensor h_buf = at::empty({2, B, H}, x.options());
  h_buf.select(0, 0).copy_(h0);
  const recurrent::ForwardRun run{kind, T, B, H, plan.packed ? plan.rows.data() : nullptr, plan.reverse,
                                  h_buf.data_ptr(), nullptr, out.data_ptr(), saved,
                                  b_hn.defined() ? b_hn.data_ptr() : nullptr};
  recurrent::forward_sequence(run, x.contiguous(), w_ih.contiguous(), w_hh, gx_bias, /*keep_gates=*/false);
  return h_buf.select(0, T % 2).clone();
}

// Walks the steps in processing order: per chunk one input-projection GEMM, then per step
// the recurrent GEMM gh = h W_hh^T over the active rows and step(t, rows, gi_t, gh).
// GEMMs go through common/gemm.h (oneDNN for CPU float32, ~2x MKL on AMD; ATen otherwise).
template <class Step>
void forward_steps(const at::Tensor& x, at::Tensor& h, const at::Tensor& w_ih, const at::Tensor& w_hh,
                   const SequencePlan& plan, const Step& step) {
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), G = w_ih.size(0);
  const int64_t K = chunk_steps(T, B * G * x.element_size());
  for (int64_t s0 = 0; s0 < T; s0 += K) {
    const int64_t n = std::min(K, T - s0), lo = chunk_first_time(plan, s0, n, T);
    const at::Tensor gi = linear_nt(x.narrow(0, lo, n).view({n * B, I}), w_ih);  // [n * B, G]
    for (int64_t s = s0; s < s0 + n; ++s) {
      const int64_t t = step_time(plan, s, T), rows = plan.rows[t];
      if (rows == 0) continue;
      const at::Tensor gh = linear_nt(first_rows(h, rows), w_hh);
      step(t, rows, row_ptr(gi, (t - lo) * B), gh.data_ptr());
    }
  }
}

// prev[i] = the state step (lo + i) started from, rebuilt from the outputs and h0 rather
// than saved by the forward: step t's predecessor is t-1 (t+1 in reverse); a row not
// active there (only possible in reverse) has not started yet and still holds h0.
void previous_states(at::Tensor& prev, const at::Tensor& out, const at::Tensor& h0, const SequencePlan& plan,
                     int64_t lo, int64_t n) {
  const int64_t T = out.size(0);
  if (!plan.reverse) {
    if (lo >= 1) {
      prev.narrow(0, 0, n).copy_(out.narrow(0, lo - 1, n));
    } else {
      prev[0].copy_(h0);
      if (n > 1) prev.narrow(0, 1, n - 1).copy_(out.narrow(0, 0, n - 1));
    }
    return;
  }
  if (lo + n <= T - 1) {
    prev.narrow(0, 0, n).copy_(out.narrow(0, lo + 1, n));
  } else {
    prev[n - 1].copy_(h0);
    if (n > 1) prev.narrow(0, 0, n - 1).copy_(out.narrow(0, lo + 1, n - 1));
  }
  if (plan.packed) {
    for (int64_t t = lo; t < lo + n && t + 1 < T; ++t) {
      const int64_t started = plan.rows[t + 1], active = plan.rows[t];
      if (active > started)
        prev[t - lo].narrow(0, started, active - started).copy_(h0.narrow(0, started, active - started));
    }
  }
}

// acc += a^T @ b (a weight gradient over one chunk's rows); reduced-precision gradients
// accumulate over chunks in float32.
void accumulate_mm_tn(at::Tensor& acc, const at::Tensor& a, const at::Tensor& b) {
  acc.add_(matmul_tn(a, b));
}

struct WeightGrads {
  at::Tensor dx, dw_ih, dw_hh, db_ih, db_hh;
};

// Walks the steps backwards: per step step(t, rows, dgi_t, dgh_t, prev_t) writes the
// pre-activation gradients and leaves in dh what reaches h other than through W_hh;
// then dh[:rows] (+)= dgh_t W_hh (replace_dh: h' depends on h only through W_hh). Per
// chunk, the weight / bias / input gradients of its steps. dgh aliases dgi when the
// recurrent and input pre-activations coincide (RNN).
// What the CPU sequence engine needs beyond backward_steps' arguments (kind unset: the
// per-step loop runs instead).
struct EngineBackward {
  std::optional<recurrent::CellKind> kind;
  const at::Tensor* grad_out = nullptr;
  const at::Tensor* ws = nullptr;
};

// The running dL/dh of backward: a copy of grad_hy, in float32 for bfloat16 on the engine.
at::Tensor engine_dh(const at::Tensor& grad_hy, bool engine) {
  if (engine && grad_hy.scalar_type() == at::kBFloat16)
    return grad_hy.to(at::kFloat, /*non_blocking=*/false, /*copy=*/true).contiguous();
  return grad_hy.clone(at::MemoryFormat::Contiguous);
}

template <class Step>
WeightGrads backward_steps(const at::Tensor& x, const at::Tensor& h0, const at::Tensor& out, at::Tensor& dh,
                           const at::Tensor& w_ih, const at::Tensor& w_hh, const SequencePlan& plan,
                           bool need_input_grad, bool need_hx_grad, bool shared_dgh, bool replace_dh,
                           const EngineBackward& engine, const Step& step) {
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = h0.size(1), G = w_ih.size(0);
  const auto opts = x.options();
  const auto acc_opts = opts.dtype(at::toOpMathType(x.scalar_type()));
  const int64_t K = chunk_steps(T, B * ((shared_dgh ? 1 : 2) * G + H) * x.element_size());
  // One chunk (short sequences, cells): the gradients come straight from single GEMMs, with
  // no accumulators, which matters for the per-call cost of a cell's backward.
  const bool one_chunk = K >= T;
  at::Tensor dgi = at::empty({K, B, G}, opts);
  at::Tensor dgh = shared_dgh ? dgi : at::empty({K, B, G}, opts);
  // A single step's previous state is h0 itself.
  const bool prev_is_h0 = T == 1;
  at::Tensor prev = prev_is_h0 ? h0.unsqueeze(0) : at::empty({K, B, H}, opts);
  // bfloat16 on the engine: dh in float32, dG in bfloat16 (recurrent/cpu_engine.h).
  const bool bf16_engine = engine.kind && x.scalar_type() == at::kBFloat16;
  TORCH_CHECK(!bf16_engine || dh.scalar_type() == at::kFloat, "fastseq GRU/RNN backward: the bfloat16 engine keeps dh in float32");
  const at::Tensor packed_backward = bf16_engine   ? recurrent::pack_backward_weight_bfloat16(w_hh)
                                     : engine.kind ? recurrent::pack_backward_weight(w_hh)
                                                   : at::Tensor();
  WeightGrads g;
  g.dx = need_input_grad ? at::empty({T, B, I}, opts) : at::empty({0}, opts);
  if (!one_chunk) {
    g.dw_ih = at::zeros({G, I}, acc_opts);
    g.dw_hh = at::zeros({G, H}, acc_opts);
    g.db_ih = at::zeros({G}, acc_opts);
    if (!shared_dgh) g.db_hh = at::zeros({G}, acc_opts);
  }
  for (int64_t s_end = T; s_end > 0; s_end -= K) {
    const int64_t n = std::min(K, s_end), s0 = s_end - n, lo = chunk_first_time(plan, s0, n, T);
    if (plan.packed) {
      dgi.zero_();
      if (!shared_dgh) dgh.zero_();
    }
    if (!prev_is_h0) previous_states(prev, out, h0, plan, lo, n);
    if (engine.kind) {
      recurrent::BackwardRun run{*engine.kind, T, B, H, plan.packed ? plan.rows.data() : nullptr,
                                 plan.reverse, T - s_end, T - s0, need_hx_grad, engine.grad_out->data_ptr(),
                                 dh.data_ptr(), nullptr, nullptr, nullptr, nullptr,
                                 engine.ws ? engine.ws->data_ptr() : nullptr, prev.data_ptr(), out.data_ptr(),
                                 dgi.data_ptr(), dgh.data_ptr(), lo, &packed_backward};
      if (bf16_engine) recurrent::backward_bfloat16(run, packed_backward);
      else recurrent::run_backward(run, x.scalar_type());
    }
    for (int64_t s = s_end - 1; s >= s0 && !engine.kind; --s) {
      const int64_t t = step_time(plan, s, T), rows = plan.rows[t];
      if (rows == 0) continue;
      step(t, rows, row_ptr(dgi, t - lo), row_ptr(dgh, t - lo), row_ptr(prev, t - lo));
      if (s == 0 && !need_hx_grad) continue;  // what would flow on is d h0 only
      at::Tensor dh_rows = first_rows(dh, rows);
      const at::Tensor dh_through_w_hh = matmul(first_rows(dgh[t - lo], rows), w_hh);
      if (replace_dh) dh_rows.copy_(dh_through_w_hh);
      else dh_rows.add_(dh_through_w_hh);
    }
    const at::Tensor dgi2 = dgi.narrow(0, 0, n).view({n * B, G});
    const at::Tensor dgh2 = dgh.narrow(0, 0, n).view({n * B, G});
    const at::Tensor x2 = x.narrow(0, lo, n).view({n * B, I});
    const at::Tensor prev2 = prev.narrow(0, 0, n).view({n * B, H});
    if (one_chunk) {
      g.dw_ih = matmul_tn(dgi2, x2);
      g.dw_hh = matmul_tn(dgh2, prev2);
      g.db_ih = dgi2.sum(0);
      if (!shared_dgh) g.db_hh = dgh2.sum(0);
    } else {
      accumulate_mm_tn(g.dw_ih, dgi2, x2);
      accumulate_mm_tn(g.dw_hh, dgh2, prev2);
      g.db_ih.add_(dgi2.sum(0));
      if (!shared_dgh) g.db_hh.add_(dgh2.sum(0));
    }
    if (need_input_grad) g.dx.narrow(0, lo, n).view({n * B, I}).copy_(matmul(dgi2, w_ih));
  }
  if (T == 0) {
    g.dw_ih = at::zeros({G, I}, opts);
    g.dw_hh = at::zeros({G, H}, opts);
    g.db_ih = at::zeros({G}, opts);
    g.db_hh = at::zeros({G}, opts);
    return g;
  }
  const auto dtype = x.scalar_type();
  g.dw_ih = g.dw_ih.to(dtype);
  g.dw_hh = g.dw_hh.to(dtype);
  g.db_ih = g.db_ih.to(dtype);
  g.db_hh = shared_dgh ? g.db_ih.clone() : g.db_hh.to(dtype);
  return g;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_forward_loop(
    const PointwiseBackend& backend, const at::Tensor& x, const at::Tensor& h0,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& b_ih, const at::Tensor& b_hh,
    const SequencePlan& plan, bool need_workspace) {
  const int64_t T = x.size(0), B = x.size(1), H = h0.size(1);
  const auto opts = x.options();
  const auto acc_opts = opts.dtype(at::toOpMathType(x.scalar_type()));
  at::Tensor h = h0.clone();
  at::Tensor out = rows_buffer({T, B, H}, opts, plan.packed);
  at::Tensor ws = need_workspace ? rows_buffer({T, B, 4 * H}, acc_opts, plan.packed) : at::empty({0}, acc_opts);
  const auto dtype = x.scalar_type();
  if (recurrent::engine_runs(x, H)) {
    // b_hr and b_hz fold into the input projection; b_hn stays inside r * (W_hn h + b_hn).
    const auto acc = acc_opts.dtype().toScalarType();
    at::Tensor gx_bias = b_ih.to(acc, /*non_blocking=*/false, /*copy=*/true);
    gx_bias.narrow(0, 0, 2 * H).add_(b_hh.narrow(0, 0, 2 * H));
    h = engine_forward(recurrent::CellKind::kGru, x, h0, w_ih, w_hh, gx_bias,
                       b_hh.narrow(0, 2 * H, H).to(acc).contiguous(), plan, out,
                       need_workspace ? ws.data_ptr() : nullptr);
    return {out, h, ws};
  }
  forward_steps(x, h, w_ih, w_hh, plan, [&](int64_t t, int64_t rows, void* gi_t, void* gh) {
    GruStepForward step{gi_t, gh, b_ih.data_ptr(), b_hh.data_ptr(), h.data_ptr(), h.data_ptr(), row_ptr(out, t),
                        need_workspace ? row_ptr(ws, t) : nullptr, rows, H};
    backend.gru_forward(dtype, step);
  });
  return {out, h, ws};
}

std::vector<at::Tensor> gru_backward_loop(
    const PointwiseBackend& backend, const at::Tensor& grad_out, const at::Tensor& grad_hy,
    const at::Tensor& x, const at::Tensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const at::Tensor& out, const at::Tensor& ws, const SequencePlan& plan, bool need_input_grad,
    bool need_hx_grad) {
  const int64_t H = h0.size(1);
  const bool engine = recurrent::engine_runs(x, H);
  at::Tensor dh = engine_dh(grad_hy, engine);
  const auto dtype = x.scalar_type();
  WeightGrads g = backward_steps(
      x, h0, out, dh, w_ih, w_hh, plan, need_input_grad, need_hx_grad, /*shared_dgh=*/false, /*replace_dh=*/false,
      engine ? EngineBackward{recurrent::CellKind::kGru, &grad_out, &ws} : EngineBackward{},
      [&](int64_t t, int64_t rows, void* dgi_t, void* dgh_t, void* prev_t) {
        GruStepBackward step{row_ptr(grad_out, t), dh.data_ptr(), prev_t, row_ptr(ws, t), dgi_t, dgh_t, rows, H};
        backend.gru_backward(dtype, step);
      });
  return {g.dx, need_hx_grad ? dh.to(dtype) : at::empty({0}, grad_hy.options()), g.dw_ih, g.dw_hh, g.db_ih, g.db_hh};
}

std::tuple<at::Tensor, at::Tensor> rnn_forward_loop(
    const PointwiseBackend& backend, const at::Tensor& x, const at::Tensor& h0,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& b_ih, const at::Tensor& b_hh,
    const SequencePlan& plan, bool relu) {
  const int64_t T = x.size(0), B = x.size(1), H = h0.size(1);
  at::Tensor h = h0.clone();
  at::Tensor out = rows_buffer({T, B, H}, x.options(), plan.packed);
  const auto dtype = x.scalar_type();
  if (recurrent::engine_runs(x, H)) {
    const auto acc = at::toOpMathType(dtype);
    h = engine_forward(relu ? recurrent::CellKind::kRnnRelu : recurrent::CellKind::kRnnTanh, x, h0, w_ih,
                       w_hh, at::add(b_ih.to(acc), b_hh.to(acc)), at::Tensor(), plan, out, nullptr);
    return {out, h};
  }
  forward_steps(x, h, w_ih, w_hh, plan, [&](int64_t t, int64_t rows, void* gi_t, void* gh) {
    RnnStepForward step{gi_t, gh, b_ih.data_ptr(), b_hh.data_ptr(), h.data_ptr(), row_ptr(out, t), rows, H, relu};
    backend.rnn_forward(dtype, step);
  });
  return {out, h};
}

std::vector<at::Tensor> rnn_backward_loop(
    const PointwiseBackend& backend, const at::Tensor& grad_out, const at::Tensor& grad_hy,
    const at::Tensor& x, const at::Tensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const at::Tensor& out, const SequencePlan& plan, bool relu, bool need_input_grad, bool need_hx_grad) {
  const int64_t H = h0.size(1);
  const bool engine = recurrent::engine_runs(x, H);
  at::Tensor dh = engine_dh(grad_hy, engine);
  const auto dtype = x.scalar_type();
  WeightGrads g = backward_steps(
      x, h0, out, dh, w_ih, w_hh, plan, need_input_grad, need_hx_grad, /*shared_dgh=*/true, /*replace_dh=*/true,
      engine
          ? EngineBackward{relu ? recurrent::CellKind::kRnnRelu : recurrent::CellKind::kRnnTanh, &grad_out, nullptr}
          : EngineBackward{},
      [&](int64_t t, int64_t rows, void* da_t, void*, void*) {
        RnnStepBackward step{row_ptr(grad_out, t), dh.data_ptr(), row_ptr(out, t), da_t, rows, H, relu};
        backend.rnn_backward(dtype, step);
      });
  return {g.dx, need_hx_grad ? dh.to(dtype) : at::empty({0}, grad_hy.options()), g.dw_ih, g.dw_hh, g.db_ih, g.db_hh};
}

std::tuple<at::Tensor, at::Tensor> gru_cell_forward_impl(
    const PointwiseBackend& backend, const at::Tensor& x, const at::Tensor& h, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const at::Tensor& b_ih, const at::Tensor& b_hh, bool need_workspace) {
  const int64_t B = x.size(0), H = h.size(1);
  const at::Tensor gi = linear_nt(x, w_ih), gh = linear_nt(h, w_hh);
  at::Tensor h_new = at::empty({B, H}, x.options());
  const auto acc_opts = x.options().dtype(at::toOpMathType(x.scalar_type()));
  at::Tensor ws = at::empty({need_workspace ? B : 0, 4 * H}, acc_opts);
  if (B == 0) return {h_new, ws};
  GruStepForward step{gi.data_ptr(), gh.data_ptr(), b_ih.data_ptr(), b_hh.data_ptr(), h.data_ptr(),
                      h_new.data_ptr(), h_new.data_ptr(), need_workspace ? ws.data_ptr() : nullptr, B, H};
  backend.gru_forward(x.scalar_type(), step);
  return {h_new, ws};
}

at::Tensor rnn_cell_forward_impl(
    const PointwiseBackend& backend, const at::Tensor& x, const at::Tensor& h, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const at::Tensor& b_ih, const at::Tensor& b_hh, bool relu) {
  const int64_t B = x.size(0), H = h.size(1);
  const at::Tensor gi = linear_nt(x, w_ih), gh = linear_nt(h, w_hh);
  at::Tensor h_new = at::empty({B, H}, x.options());
  if (B == 0) return h_new;
  RnnStepForward step{gi.data_ptr(), gh.data_ptr(), b_ih.data_ptr(), b_hh.data_ptr(), h_new.data_ptr(),
                      h_new.data_ptr(), B, H, relu};
  backend.rnn_forward(x.scalar_type(), step);
  return h_new;
}

}  // namespace gru_rnn
}  // namespace fastseq
