// The time loops of the fused GRU / RNN, shared by CPU and CUDA: the input projection of
// all steps as one GEMM, per step one recurrent GEMM plus one fused pointwise pass, and in
// backward one GEMM per step plus one large GEMM per weight over all steps at the end.
#include "gru_rnn/gru_rnn_loops.h"

#include <ATen/OpMathType.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>

namespace fastseq {
namespace gru_rnn {
namespace {

// Time index of the s-th step in processing order.
inline int64_t step_time(const SequencePlan& plan, int64_t s, int64_t T) {
  return plan.reverse ? T - 1 - s : s;
}

// Buffers whose inactive rows feed a GEMM or the caller must be zero when packed.
at::Tensor rows_buffer(at::IntArrayRef sizes, const at::TensorOptions& opts, bool packed) {
  return packed ? at::zeros(sizes, opts) : at::empty(sizes, opts);
}

// The state each step started from, [T, B, H], rebuilt from the outputs and h0 rather than
// saved by the forward: step t's predecessor is t-1 (t+1 in reverse); a row not active
// there (only possible in reverse) has not started yet and still holds h0.
at::Tensor previous_states(const at::Tensor& out, const at::Tensor& h0, const SequencePlan& plan) {
  const int64_t T = out.size(0);
  at::Tensor prev = at::empty_like(out);
  if (T == 0) return prev;
  const int64_t first = step_time(plan, 0, T);
  prev[first].copy_(h0);
  if (T == 1) return prev;
  if (!plan.reverse) {
    prev.narrow(0, 1, T - 1).copy_(out.narrow(0, 0, T - 1));
  } else {
    prev.narrow(0, 0, T - 1).copy_(out.narrow(0, 1, T - 1));
    if (plan.packed) {
      for (int64_t t = 0; t + 1 < T; ++t) {
        const int64_t started = plan.rows[t + 1], active = plan.rows[t];
        if (active > started)
          prev[t].narrow(0, started, active - started).copy_(h0.narrow(0, started, active - started));
      }
    }
  }
  return prev;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_forward_loop(
    const PointwiseBackend& backend, const at::Tensor& x, const at::Tensor& h0,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& b_ih, const at::Tensor& b_hh,
    const SequencePlan& plan, bool need_workspace) {
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = h0.size(1);
  const auto opts = x.options();
  const auto acc_opts = opts.dtype(at::toOpMathType(x.scalar_type()));
  at::Tensor gi = at::mm(x.view({T * B, I}), w_ih.t()).view({T, B, 3 * H});
  at::Tensor gh = at::empty({B, 3 * H}, opts);
  at::Tensor h = h0.clone();
  at::Tensor out = rows_buffer({T, B, H}, opts, plan.packed);
  at::Tensor ws = need_workspace ? rows_buffer({T, B, 4 * H}, acc_opts, plan.packed) : at::empty({0}, acc_opts);
  const at::Tensor w_hh_t = w_hh.t();
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = step_time(plan, s, T), rows = plan.rows[t];
    if (rows == 0) continue;
    at::Tensor h_rows = h.narrow(0, 0, rows), gh_rows = gh.narrow(0, 0, rows);
    at::mm_out(gh_rows, h_rows, w_hh_t);
    GruStepForward step{gi[t].data_ptr(), gh.data_ptr(), b_ih.data_ptr(), b_hh.data_ptr(),
                        h.data_ptr(), out[t].data_ptr(),
                        need_workspace ? ws[t].data_ptr() : nullptr, rows, H};
    backend.gru_forward(x.scalar_type(), step);
  }
  return {out, h, ws};
}

std::vector<at::Tensor> gru_backward_loop(
    const PointwiseBackend& backend, const at::Tensor& grad_out, const at::Tensor& grad_hy,
    const at::Tensor& x, const at::Tensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const at::Tensor& out, const at::Tensor& ws, const SequencePlan& plan, bool need_input_grad) {
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = h0.size(1);
  const auto opts = x.options();
  at::Tensor dh = grad_hy.clone();
  at::Tensor dgi = rows_buffer({T, B, 3 * H}, opts, plan.packed);
  at::Tensor dgh = rows_buffer({T, B, 3 * H}, opts, plan.packed);
  at::Tensor prev = previous_states(out, h0, plan);
  for (int64_t s = T - 1; s >= 0; --s) {
    const int64_t t = step_time(plan, s, T), rows = plan.rows[t];
    if (rows == 0) continue;
    at::Tensor dgh_t = dgh[t];
    GruStepBackward step{grad_out[t].data_ptr(), dh.data_ptr(), prev[t].data_ptr(), ws[t].data_ptr(),
                         dgi[t].data_ptr(), dgh_t.data_ptr(), rows, H};
    backend.gru_backward(x.scalar_type(), step);
    at::Tensor dh_rows = dh.narrow(0, 0, rows);
    dh_rows.addmm_(dgh_t.narrow(0, 0, rows), w_hh);
  }
  const at::Tensor dgi2 = dgi.view({T * B, 3 * H}), dgh2 = dgh.view({T * B, 3 * H});
  at::Tensor dx = need_input_grad ? at::mm(dgi2, w_ih).view({T, B, I}) : at::empty({0}, opts);
  return {dx, dh, at::mm(dgi2.t(), x.view({T * B, I})), at::mm(dgh2.t(), prev.view({T * B, H})),
          dgi2.sum(0), dgh2.sum(0)};
}

std::tuple<at::Tensor, at::Tensor> rnn_forward_loop(
    const PointwiseBackend& backend, const at::Tensor& x, const at::Tensor& h0,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& b_ih, const at::Tensor& b_hh,
    const SequencePlan& plan, bool relu) {
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = h0.size(1);
  const auto opts = x.options();
  at::Tensor gi = at::mm(x.view({T * B, I}), w_ih.t()).view({T, B, H});
  at::Tensor gh = at::empty({B, H}, opts);
  at::Tensor h = h0.clone();
  at::Tensor out = rows_buffer({T, B, H}, opts, plan.packed);
  const at::Tensor w_hh_t = w_hh.t();
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = step_time(plan, s, T), rows = plan.rows[t];
    if (rows == 0) continue;
    at::Tensor gh_rows = gh.narrow(0, 0, rows);
    at::mm_out(gh_rows, h.narrow(0, 0, rows), w_hh_t);
    RnnStepForward step{gi[t].data_ptr(), gh.data_ptr(), b_ih.data_ptr(), b_hh.data_ptr(),
                        h.data_ptr(), out[t].data_ptr(), rows, H, relu};
    backend.rnn_forward(x.scalar_type(), step);
  }
  return {out, h};
}

std::vector<at::Tensor> rnn_backward_loop(
    const PointwiseBackend& backend, const at::Tensor& grad_out, const at::Tensor& grad_hy,
    const at::Tensor& x, const at::Tensor& h0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const at::Tensor& out, const SequencePlan& plan, bool relu, bool need_input_grad) {
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = h0.size(1);
  const auto opts = x.options();
  at::Tensor dh = grad_hy.clone();
  at::Tensor da = rows_buffer({T, B, H}, opts, plan.packed);
  for (int64_t s = T - 1; s >= 0; --s) {
    const int64_t t = step_time(plan, s, T), rows = plan.rows[t];
    if (rows == 0) continue;
    at::Tensor da_t = da[t];
    RnnStepBackward step{grad_out[t].data_ptr(), dh.data_ptr(), out[t].data_ptr(), da_t.data_ptr(),
                         rows, H, relu};
    backend.rnn_backward(x.scalar_type(), step);
    // h' depends on h only through W_hh h, so the carried gradient is replaced, not added to.
    at::Tensor dh_rows = dh.narrow(0, 0, rows);
    at::mm_out(dh_rows, da_t.narrow(0, 0, rows), w_hh);
  }
  const at::Tensor da2 = da.view({T * B, H});
  at::Tensor prev = previous_states(out, h0, plan);
  at::Tensor dx = need_input_grad ? at::mm(da2, w_ih).view({T, B, I}) : at::empty({0}, opts);
  at::Tensor db = da2.sum(0);
  return {dx, dh, at::mm(da2.t(), x.view({T * B, I})), at::mm(da2.t(), prev.view({T * B, H})), db,
          db.clone()};
}

}  // namespace gru_rnn
}  // namespace fastseq
