// See cpu_engine.h. Work split: a step's output is cut into tiles (unit blocks x row
// blocks); each thread takes a contiguous share of the tiles in unit-major order, so while
// the batch size stays the same it owns the same units, rows and weight panels at every step
// (its panels stay in its own L2). One barrier per step: forward, because step t+1 reads
// every unit of h_t; backward, because dh_{t-1} = dG_t W_hh reads every gate of dG_t. The
// backward pointwise of step t-1 reads only the dh rows and units its own thread wrote at
// step t (the same tiles), so it needs no second barrier unless the active rows change.
#include "common/cpu_vec.h"  // first: picks the at::vec ISA

#include "recurrent/cpu_engine.h"

#include "common/gemm.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cstring>

#include "recurrent/cpu_cells.h"
#include "recurrent/cpu_step_gemm.h"
#include "recurrent/cpu_team.h"

namespace fastseq {
namespace recurrent {
namespace {

template <class T>
constexpr int64_t kW = Vec<T>::size();

inline int64_t time_of(int64_t s, int64_t T, bool reverse) { return reverse ? T - 1 - s : s; }
inline int64_t rows_at(const int64_t* rows, int64_t t, int64_t B) { return rows ? rows[t] : B; }

// The tiles of one step: `ntiles` groups of up to `per_tile` W-wide unit blocks, times the
// balanced row blocks of the active rows.
struct Tiling {
  int64_t nblocks, per_tile, ntiles, rows, row_step, nrow_blocks;
  Tiling(int64_t nblocks_, int64_t per_tile_, int64_t rows_, int nv_full)
      : nblocks(nblocks_), per_tile(per_tile_), ntiles((nblocks_ + per_tile_ - 1) / per_tile_),
        rows(rows_), row_step(row_block(rows_, nv_full)),
        nrow_blocks(row_step ? (rows_ + row_step - 1) / row_step : 0) {}
  int64_t tasks() const { return ntiles * nrow_blocks; }
  // Task -> first unit block, block count, first row, row count.
  void task(int64_t i, int64_t& b0, int64_t& nb, int64_t& r0, int64_t& nr) const {
    const int64_t tile = i / nrow_blocks, rb = i % nrow_blocks;
    b0 = tile * per_tile;
    nb = std::min(per_tile, nblocks - b0);
    r0 = rb * row_step;
    nr = std::min(row_step, rows - r0);
  }
};

// Unit blocks per tile: as many as the kernel's NV weight vectors hold (4 / gates), fewer
// when that would leave threads without a tile.
int64_t blocks_per_tile(int64_t nblocks, int64_t gates, int team) {
  const int64_t fit = std::max<int64_t>(1, kMaxVectors / gates);
  return std::clamp<int64_t>((nblocks + team - 1) / team, 1, fit);
}

template <class T, class Cell>
void forward_impl(const ForwardRun& run) {
  constexpr int64_t W = kW<T>;
  constexpr int G = Cell::kGates;
  const int64_t T_ = run.T, B = run.B, H = run.H, GH = G * H, nub = (H + W - 1) / W;
  const T* const gx = static_cast<const T*>(run.gx);
  const T* const x = static_cast<const T*>(run.x);
  const int64_t I = run.I;
  const T* const x_panels = x ? run.packed_x->data_ptr<T>() : nullptr;
  T* const gates = static_cast<T*>(run.gates);
  T* const hbuf = static_cast<T*>(run.h);
  T* const out = static_cast<T*>(run.out);
  T* const saved = static_cast<T*>(run.saved);
  const T* const panels = run.packed->data_ptr<T>();
  const int64_t saved_row = run.kind == CellKind::kGru ? 4 * H : H;
  const int threads = team_size_for(B * GH * (H + (x ? I : 0)));

  run_team(threads, [&](int tid, int team, StepBarrier& barrier) {
    const int64_t per_tile = blocks_per_tile(nub, G, team);
    for (int64_t s = run.s_begin; s < run.s_end; ++s) {
      const int64_t t = time_of(s, T_, run.reverse), rows = rows_at(run.rows, t, B);
      ForwardStep<T> step{gx ? gx + (t - run.gx_t0) * B * GH : nullptr, static_cast<const T*>(run.bias),
                          gates ? gates + t * B * GH : nullptr, hbuf + (s & 1) * B * H,
                          hbuf + ((s + 1) & 1) * B * H, out + t * B * H,
                          static_cast<T*>(run.c), saved ? saved + t * B * saved_row : nullptr,
                          static_cast<const T*>(run.b_hn), H};
      const T* const x_t = x ? x + t * B * I : nullptr;
      const Tiling tiling(nub, per_tile, rows, static_cast<int>(std::min<int64_t>(per_tile * G, kMaxVectors)));
      int64_t begin, end;
      split_range(tiling.tasks(), tid, team, begin, end);
      for (int64_t i = begin; i < end; ++i) {
        int64_t b0, nb, r0, nr;
        tiling.task(i, b0, nb, r0, nr);
        dispatch_tile(static_cast<int>(nr), static_cast<int>(nb * G), [&]<int R, int NV>() {
          const T* b[NV];
          for (int v = 0; v < NV; ++v) b[v] = panels + (b0 + v / G) * H * G * W + (v % G) * W;
          Vec<T> acc[R][NV];
          if constexpr (Cell::kSumsInputAndState) {
            if (x_t) {  // the fused input projection: x_t W_ih^T into the same registers
              const T* bx[NV];
              for (int v = 0; v < NV; ++v) bx[v] = x_panels + (b0 + v / G) * I * G * W + (v % G) * W;
              accumulate<R, NV>(x_t + r0 * I, I, I, bx, G * W, acc, true);
            }
          }
          accumulate<R, NV>(step.h_prev + r0 * H, H, H, b, G * W, acc, !x_t);
          for (int r = 0; r < R; ++r)
            for (int q = 0; q < NV / G; ++q) {
              const int64_t u = (b0 + q) * W;
              Cell::forward(step, r0 + r, u, static_cast<int>(std::min<int64_t>(W, H - u)), &acc[r][q * G]);
            }
        });
      }
      if (rows < B) {  // rows not started (reverse) or finished: their state carries over
        int64_t u0, u1;
        split_range(nub, tid, team, u0, u1);
        u0 *= W, u1 = std::min(H, u1 * W);
        for (int64_t r = rows; r < B && u1 > u0; ++r) {
          std::memcpy(step.h_next + r * H + u0, step.h_prev + r * H + u0, (u1 - u0) * sizeof(T));
          if (run.kind == CellKind::kLstm && step.saved)
            std::memcpy(step.saved + r * H + u0, step.c + r * H + u0, (u1 - u0) * sizeof(T));
        }
      }
      barrier.wait();
    }
  });
}

template <class T, class Cell>
void backward_impl(const BackwardRun& run) {
  constexpr int64_t W = kW<T>;
  constexpr int G = Cell::kGates;
  const int64_t T_ = run.T, B = run.B, H = run.H, GH = G * H, ncb = (H + W - 1) / W;
  T* const dh = static_cast<T*>(run.dh);
  const T* const panels = run.packed->data_ptr<T>();
  const int threads = team_size_for(B * GH * H);

  run_team(threads, [&](int tid, int team, StepBarrier& barrier) {
    const int64_t per_tile = blocks_per_tile(ncb, 1, team);
    int64_t last_rows = -1;
    for (int64_t s = run.s_begin; s < run.s_end; ++s) {
      // Backward undoes the forward's order: its first step is the forward's last.
      const int64_t t = time_of(s, T_, !run.reverse), rows = rows_at(run.rows, t, B);
      if (rows == 0) continue;
      const bool forward_first = run.reverse ? t == T_ - 1 : t == 0;
      const BackwardStep<T> step = backward_step_at<G, T, T>(run, t);
      const Tiling tiling(ncb, per_tile, rows, static_cast<int>(per_tile));
      int64_t begin, end;
      split_range(tiling.tasks(), tid, team, begin, end);
      // A new set of active rows moves tiles between threads: dh rows written by another
      // thread's GEMM of the previous step must be complete before they are read.
      if (rows != last_rows && last_rows >= 0) barrier.wait();
      last_rows = rows;
      for (int64_t i = begin; i < end; ++i) {
        int64_t b0, nb, r0, nr;
        tiling.task(i, b0, nb, r0, nr);
        for (int64_t r = r0; r < r0 + nr; ++r)
          for (int64_t cb = b0; cb < b0 + nb; ++cb)
            Cell::backward(step, r, cb * W, static_cast<int>(std::min<int64_t>(W, H - cb * W)));
      }
      barrier.wait();
      if (s == run.s_end - 1 && !run.need_last_dh && forward_first) continue;
      for (int64_t i = begin; i < end; ++i) {
        int64_t b0, nb, r0, nr;
        tiling.task(i, b0, nb, r0, nr);
        dispatch_tile(static_cast<int>(nr), static_cast<int>(nb), [&]<int R, int NV>() {
          const T* b[NV];
          for (int v = 0; v < NV; ++v) b[v] = panels + (b0 + v) * GH * W;
          Vec<T> acc[R][NV];
          accumulate<R, NV>(step.dgh + r0 * GH, GH, GH, b, W, acc, true);
          for (int r = 0; r < R; ++r)
            for (int v = 0; v < NV; ++v) {
              const int64_t col = (b0 + v) * W;
              const int n = static_cast<int>(std::min<int64_t>(W, H - col));
              T* d = dh + (r0 + r) * H + col;
              if constexpr (Cell::kReplaceDh) acc[r][v].store(d, n);
              else (acc[r][v] + Vec<T>::loadu(d, n)).store(d, n);
            }
        });
      }
    }
  });
}

template <class T>
void forward_typed(const ForwardRun& run) {
  switch (run.kind) {
    case CellKind::kLstm: return forward_impl<T, LstmPolicy>(run);
    case CellKind::kGru: return forward_impl<T, GruPolicy>(run);
    case CellKind::kRnnTanh: return forward_impl<T, RnnPolicy<false>>(run);
    case CellKind::kRnnRelu: return forward_impl<T, RnnPolicy<true>>(run);
  }
}

template <class T>
void backward_typed(const BackwardRun& run) {
  switch (run.kind) {
    case CellKind::kLstm: return backward_impl<T, LstmPolicy>(run);
    case CellKind::kGru: return backward_impl<T, GruPolicy>(run);
    case CellKind::kRnnTanh: return backward_impl<T, RnnPolicy<false>>(run);
    case CellKind::kRnnRelu: return backward_impl<T, RnnPolicy<true>>(run);
  }
}

// Packing runs on every call (the weights may have changed since the last), so it is
// at::vec's SIMD transpose over the threads, not a strided scalar copy: that took 25% of an
// LSTM call at B=1, H=256.
template <class T>
at::Tensor pack_forward_typed(const at::Tensor& w, int64_t G) {
  constexpr int64_t W = kW<T>;
  const int64_t H = w.size(0) / G, P = w.size(1), nub = (H + W - 1) / W;
  // Zeros only where a last, partial block of units has padding lanes to fill.
  at::Tensor packed = H % W ? at::zeros({nub, P, G * W}, w.options()) : at::empty({nub, P, G * W}, w.options());
  const T* src = w.data_ptr<T>();
  T* dst = packed.data_ptr<T>();
  at::parallel_for(0, nub, 1, [&](int64_t ub0, int64_t ub1) {
    for (int64_t ub = ub0; ub < ub1; ++ub)
      for (int64_t q = 0; q < G; ++q)  // rows (units) x k  ->  k x lanes of gate q
        at::vec::transpose_mxn<T>(src + (q * H + ub * W) * P, P, dst + ub * P * G * W + q * W, G * W,
                                  static_cast<int>(std::min<int64_t>(W, H - ub * W)), static_cast<int>(P));
  });
  return packed;
}

template <class T>
at::Tensor pack_backward_typed(const at::Tensor& w) {
  constexpr int64_t W = kW<T>;
  const int64_t K = w.size(0), P = w.size(1), ncb = (P + W - 1) / W;
  at::Tensor packed = P % W ? at::zeros({ncb, K, W}, w.options()) : at::empty({ncb, K, W}, w.options());
  const T* src = w.data_ptr<T>();
  T* dst = packed.data_ptr<T>();
  at::parallel_for(0, ncb, 1, [&](int64_t cb0, int64_t cb1) {
    for (int64_t cb = cb0; cb < cb1; ++cb) {
      const int64_t c0 = cb * W, n = std::min<int64_t>(W, P - c0);
      for (int64_t k = 0; k < K; ++k) std::copy(src + k * P + c0, src + k * P + c0 + n, dst + (cb * K + k) * W);
    }
  });
  return packed;
}

void check_packed(const at::Tensor* packed, c10::ScalarType dtype, const char* what) {
  TORCH_CHECK(packed && packed->defined() && packed->is_contiguous() && packed->scalar_type() == dtype,
              "fastseq recurrent engine: ", what, " must be a contiguous ", dtype, " tensor");
}

}  // namespace

void set_min_macs_per_thread(int64_t macs) {
  TORCH_CHECK(macs >= 1, "set_recurrent_engine_settings: min_macs_per_thread must be >= 1, got ", macs);
  min_macs_per_thread().store(macs);
}

int64_t get_min_macs_per_thread() { return min_macs_per_thread().load(); }

bool engine_supports(const at::Tensor& input) {
  return input.is_cpu() && (input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble) &&
         input.dim() == 3 && input.size(0) >= kMinEngineSteps;
}

bool engine_runs(const at::Tensor& input, int64_t hidden_size) {
  return engine_supports(input) || engine_runs_bfloat16(input, hidden_size);
}

at::Tensor pack_forward_weight(const at::Tensor& weight, int64_t gates) {
  const at::Tensor w = weight.contiguous();
  TORCH_CHECK(w.dim() == 2 && w.size(0) % gates == 0, "fastseq recurrent engine: the weight must be [",
              gates, " * H, K], got ", w.sizes());
  return w.scalar_type() == at::kDouble ? pack_forward_typed<double>(w, gates) : pack_forward_typed<float>(w, gates);
}

at::Tensor pack_backward_weight(const at::Tensor& w_hh) {
  const at::Tensor w = w_hh.contiguous();
  return w.scalar_type() == at::kDouble ? pack_backward_typed<double>(w) : pack_backward_typed<float>(w);
}

namespace {

std::atomic<int>& input_projection_mode() {
  static std::atomic<int> mode{static_cast<int>(InputProjection::kAuto)};
  return mode;
}

// The cost model of the fused input projection. Fused, a step's micro-kernel reads
// [x_t | h_{t-1}] against [W_ih | W_hh]: no [T, B, G*H] buffer to write and read back, no
// separate GEMM, but each thread's weight panels grow by I / H and must still stay in its L2
// across steps, and each loaded weight vector is reused by only B rows (the large GEMM
// reuses it over T * B rows). So: enough rows to reuse the weights, and panels that fit.
constexpr int64_t kFuseMinRows = 16;
constexpr int64_t kFuseMaxPanelBytes = int64_t(1) << 20;

bool fuse_input_projection(CellKind kind, int64_t B, int64_t I, int64_t H, int64_t elem_size) {
  const auto mode = static_cast<InputProjection>(input_projection_mode().load(std::memory_order_relaxed));
  if (kind == CellKind::kGru || mode == InputProjection::kGemm) return false;
  if (mode == InputProjection::kFused) return true;
  const int64_t G = gate_count(kind);
  const int team = team_size_for(B * G * H * (H + I));
  const int64_t panel_bytes = (I + H) * G * H / team * elem_size;
  return B >= kFuseMinRows && panel_bytes <= kFuseMaxPanelBytes;
}

void run_steps(const ForwardRun& run, c10::ScalarType dtype) {
  if (run.B == 0 || run.H == 0 || run.s_begin >= run.s_end) return;
  if (dtype == at::kDouble) forward_typed<double>(run);
  else forward_typed<float>(run);
}

// The input projection without keeping it: per chunk of steps (kChunkBytes of projections)
// one GEMM x W_ih^T into a buffer, then steps(run) over the chunk with run.gx pointing there.
template <class Steps>
void project_by_chunks(ForwardRun& run, const at::Tensor& x, const at::Tensor& w_ih, const Steps& steps) {
  const int64_t T = run.T, B = run.B, I = x.size(2), GH = w_ih.size(0);
  const at::Tensor x2d = x.view({T * B, I});
  const int64_t chunk = std::clamp<int64_t>(kChunkBytes / std::max<int64_t>(1, B * GH * x.element_size()), 1, T);
  for (int64_t s0 = 0; s0 < T; s0 += chunk) {
    const int64_t n = std::min(chunk, T - s0), lo = run.reverse ? T - s0 - n : s0;
    const at::Tensor gx = linear_nt(x2d.narrow(0, lo * B, n * B), w_ih);
    run.gx = gx.data_ptr(), run.gx_t0 = lo;
    run.s_begin = s0, run.s_end = s0 + n;
    steps(run);
  }
}

// bfloat16: the input projection as bfloat16 GEMMs over chunks of steps, the steps on
// brgemm (cpu_engine_bfloat16.cpp) with the bias, b_hn and the LSTM cell state in float32.
// keep_gates (LSTM training): the activated gates [T, B, 4H] come back in float32; run.saved
// (training) must be float32: LSTM cell states [T, B, H], GRU ws [T, B, 4H].
at::Tensor forward_sequence_bfloat16(ForwardRun run, const at::Tensor& x, const at::Tensor& w_ih,
                                     const at::Tensor& w_hh, const at::Tensor& bias, bool keep_gates) {
  const int64_t T = run.T, B = run.B, H = run.H, G = gate_count(run.kind), GH = G * H;
  const bool lstm = run.kind == CellKind::kLstm;
  TORCH_CHECK(engine_runs_bfloat16(x, H),
              "fastseq recurrent engine: bfloat16 runs with H even on CPUs with bfloat16 brgemm");
  TORCH_CHECK(!lstm || keep_gates == (run.saved != nullptr),
              "fastseq recurrent engine: bfloat16 LSTM training needs the float32 cell-state buffer, inference none");
  at::Tensor gates = at::empty({keep_gates ? T : 0, B, GH}, x.options().dtype(at::kFloat));
  run.gates = keep_gates ? gates.data_ptr() : nullptr;
  const at::Tensor packed = pack_forward_weight_bfloat16(w_hh, G);
  const at::Tensor bias_f = bias.defined() ? bias.to(at::kFloat) : at::zeros({GH}, x.options().dtype(at::kFloat));
  run.bias = bias_f.data_ptr();
  at::Tensor c_state, c;
  if (lstm) {
    c_state = at::from_blob(run.c, {B, H}, x.options());
    c = c_state.to(at::kFloat);
  }
  project_by_chunks(run, x, w_ih, [&](const ForwardRun& chunk) {
    if (B > 0 && H > 0) forward_bfloat16(chunk, packed, bias_f.data_ptr<float>(), lstm ? c.data_ptr<float>() : nullptr);
  });
  if (lstm) c_state.copy_(c);
  return gates;
}

}  // namespace

void set_input_projection(InputProjection mode) { input_projection_mode().store(static_cast<int>(mode)); }
InputProjection get_input_projection() { return static_cast<InputProjection>(input_projection_mode().load()); }

at::Tensor forward_sequence(ForwardRun run, const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& w_hh,
                            const at::Tensor& bias, bool keep_gates) {
  const c10::ScalarType dtype = x.scalar_type();
  const int64_t T = run.T, B = run.B, I = x.size(2), G = gate_count(run.kind), GH = G * run.H;
  TORCH_CHECK(x.dim() == 3 && x.size(0) == T && x.size(1) == B && x.is_contiguous(),
              "fastseq recurrent engine: x must be a contiguous [", T, ", ", B, ", I] tensor, got ", x.sizes());
  TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) == GH && w_ih.size(1) == I && w_ih.scalar_type() == dtype,
              "fastseq recurrent engine: w_ih must be a ", dtype, " [", GH, ", ", I, "] tensor, got ",
              w_ih.scalar_type(), " ", w_ih.sizes());
  // bfloat16 layers may pass a float32 bias (a sum of biases kept unrounded).
  const bool bias_dtype_ok = bias.defined() && (bias.scalar_type() == dtype ||
                                                (dtype == at::kBFloat16 && bias.scalar_type() == at::kFloat));
  TORCH_CHECK(!bias.defined() || (bias.is_contiguous() && bias.numel() == GH && bias_dtype_ok),
              "fastseq recurrent engine: bias must be a contiguous ", dtype, " tensor of ", GH, " elements, got ",
              bias.scalar_type(), " ", bias.sizes());
  run.bias = bias.defined() ? bias.data_ptr() : nullptr;
  TORCH_CHECK(!keep_gates || run.kind == CellKind::kLstm, "fastseq recurrent engine: keep_gates is LSTM's");
  if (dtype == at::kBFloat16) return forward_sequence_bfloat16(run, x, w_ih, w_hh, bias, keep_gates);
  const at::Tensor packed = pack_forward_weight(w_hh, G);
  run.packed = &packed;
  at::Tensor gates = keep_gates ? at::empty({T, B, GH}, x.options()) : at::empty({0}, x.options());
  run.gates = keep_gates ? gates.data_ptr() : nullptr;
  if (fuse_input_projection(run.kind, B, I, run.H, x.element_size())) {
    const at::Tensor packed_x = pack_forward_weight(w_ih, G);
    run.x = x.data_ptr(), run.I = I, run.packed_x = &packed_x;
    run.s_begin = 0, run.s_end = T;
    run_steps(run, dtype);
    return gates;
  }
  if (keep_gates) {  // one GEMM over all steps, into the buffer the gates will overwrite
    gates = linear_nt(x.view({T * B, I}), w_ih).view({T, B, GH});
    run.gx = run.gates = gates.data_ptr();
    run.s_begin = 0, run.s_end = T;
    run_steps(run, dtype);
    return gates;
  }
  project_by_chunks(run, x, w_ih, [&](const ForwardRun& chunk) { run_steps(chunk, dtype); });
  return gates;
}

void run_backward(const BackwardRun& run, c10::ScalarType dtype) {
  check_packed(run.packed, dtype, "the packed backward weight");
  const int64_t W = dtype == at::kDouble ? kW<double> : kW<float>;
  TORCH_CHECK(run.packed->numel() == (run.H + W - 1) / W * run.H * gate_count(run.kind) * W,
              "fastseq recurrent engine: packed backward weight has ", run.packed->numel(), " elements");
  if (run.B == 0 || run.H == 0 || run.s_begin >= run.s_end) return;
  if (dtype == at::kDouble) backward_typed<double>(run);
  else backward_typed<float>(run);
}

}  // namespace recurrent
}  // namespace fastseq
