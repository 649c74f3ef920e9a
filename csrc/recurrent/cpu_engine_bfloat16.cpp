// The bfloat16 steps of the CPU sequence engine (LSTM, GRU, Elman RNN) on oneDNN's brgemm
// micro-kernels (at::native::cpublas, AMX or AVX512-BF16 where the CPU has them: the library
// chooses at run time). Per step and thread, for each of its blocks of 16 units: one brgemm
// h_{t-1} [rows, H] (bfloat16) x the block's packed W_hh panel [H, G x 16] (VNNI) into a
// float32 tile, then the cell policy's gate math (cpu_cells.h, the same code as the float32
// engine's) on that tile while it is in L1, with the states in float32; h is rounded to
// bfloat16 (torch's bf16 layers round it too: the next step's GEMM reads bfloat16). Training
// also keeps what backward reads in float32 (LSTM gates and cells, GRU r, z, n, W_hn h + b_hn);
// its backward steps run the policy's pointwise backward in float32 and write dG in bfloat16,
// then per block of 16 units one brgemm dG_t [rows, G*H] x the block's packed W_hh columns
// [G*H, 16] into a float32 tile added to (GRU) or replacing (LSTM, RNN) the float32 dh.
// The input projection is one bfloat16 GEMM per chunk of steps (cpu_engine.cpp).
#include "common/cpu_vec.h"  // first: picks the at::vec ISA

#include "recurrent/cpu_engine.h"

#include <ATen/native/CPUBlas.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "recurrent/cpu_cells.h"
#include "recurrent/cpu_team.h"

namespace fastseq {
namespace recurrent {

#if defined(CPU_CAPABILITY_AVX512)
namespace {

namespace cpublas = at::native::cpublas;
using V = at::vec::Vectorized<float>;
using bf16 = c10::BFloat16;
constexpr int64_t kUnits = 16;  // units per block: one float vector per gate

template <class Cell>
void forward_steps(const ForwardRun& run, const at::Tensor& packed, const float* bias, float* c) {
  constexpr int G = Cell::kGates;
  constexpr int64_t kPanel = G * kUnits;  // the block's columns, its gates side by side
  const int64_t T_ = run.T, B = run.B, H = run.H, GH = G * H, nub = (H + kUnits - 1) / kUnits;
  const bf16* const gx = static_cast<const bf16*>(run.gx);
  bf16* const hbuf = static_cast<bf16*>(run.h);
  bf16* const out = static_cast<bf16*>(run.out);
  const bf16* const panels = packed.data_ptr<bf16>();
  float* const gates = static_cast<float*>(run.gates);  // LSTM training: [T, B, 4H] float32, else nullptr
  float* const saved = static_cast<float*>(run.saved);  // training: LSTM cells, GRU ws (float32), else nullptr
  const int64_t saved_row = G == 3 ? 4 * H : H;
  const int threads = team_size_for(B * GH * H);
  run_team(threads, [&](int tid, int team, StepBarrier& barrier) {
    std::vector<float> tile(B * kPanel);
    int64_t ub0, ub1;
    split_range(nub, tid, team, ub0, ub1);
    for (int64_t s = run.s_begin; s < run.s_end; ++s) {
      const int64_t t = run.reverse ? T_ - 1 - s : s, rows = run.rows ? run.rows[t] : B;
      const ForwardStep<float, bf16> step{gx + (t - run.gx_t0) * B * GH, bias, gates ? gates + t * B * GH : nullptr,
                                          hbuf + (s & 1) * B * H, hbuf + ((s + 1) & 1) * B * H, out + t * B * H, c,
                                          saved ? saved + t * B * saved_row : nullptr,
                                          static_cast<const float*>(run.b_hn), H};
      for (int64_t ub = ub0; ub < ub1; ++ub) {
        const int64_t u = ub * kUnits;
        const int n = static_cast<int>(std::min(kUnits, H - u));
        if (rows < B)  // rows not started (reverse) or finished: their state carries over
          for (int64_t r = rows; r < B; ++r) {
            std::memcpy(step.h_next + r * H + u, step.h_prev + r * H + u, n * sizeof(bf16));
            // LSTM backward reads a row's c_prev from the step before, inactive or not
            if (G == 4 && saved) std::memcpy(step.saved + r * H + u, c + r * H + u, n * sizeof(float));
          }
        if (rows == 0) continue;
        cpublas::brgemm(rows, kPanel, H, H, kPanel, kPanel, false, step.h_prev, panels + ub * H * kPanel, tile.data(),
                        true);
        for (int64_t r = 0; r < rows; ++r) {
          V acc[G];
          for (int q = 0; q < G; ++q) acc[q] = V::loadu(tile.data() + r * kPanel + q * kUnits);
          Cell::forward(step, r, u, n, acc);
        }
      }
      barrier.wait();
    }
    cpublas::brgemm_release(true);
  });
}

template <class Cell>
void backward_steps(const BackwardRun& run, const at::Tensor& packed) {
  constexpr int G = Cell::kGates;
  const int64_t T_ = run.T, B = run.B, H = run.H, GH = G * H, nub = (H + kUnits - 1) / kUnits;
  float* const dh = static_cast<float*>(run.dh);
  const bf16* const panels = packed.data_ptr<bf16>();
  const int threads = team_size_for(B * GH * H);
  // Each thread owns blocks of units for all rows and steps: it writes their dG columns and
  // their dh columns, so after a step's GEMM its next pointwise reads only its own writes,
  // and one barrier per step (dG complete before any GEMM reads it) suffices. dG of each
  // step has its own slot of dgi / dgh, so a thread ahead never overwrites what another reads.
  run_team(threads, [&](int tid, int team, StepBarrier& barrier) {
    std::vector<float> tile(B * kUnits);
    int64_t ub0, ub1;
    split_range(nub, tid, team, ub0, ub1);
    for (int64_t s = run.s_begin; s < run.s_end; ++s) {
      const int64_t t = run.reverse ? s : T_ - 1 - s, rows = run.rows ? run.rows[t] : B;
      if (rows == 0) continue;
      const bool forward_first = run.reverse ? t == T_ - 1 : t == 0;
      const BackwardStep<float, bf16> step = backward_step_at<G, float, bf16>(run, t);
      for (int64_t ub = ub0; ub < ub1; ++ub) {
        const int64_t u = ub * kUnits;
        const int n = static_cast<int>(std::min(kUnits, H - u));
        for (int64_t r = 0; r < rows; ++r) Cell::backward(step, r, u, n);
      }
      barrier.wait();
      if (s == run.s_end - 1 && !run.need_last_dh && forward_first) continue;
      for (int64_t ub = ub0; ub < ub1; ++ub) {  // dh_{t-1} (+)= dG_t W_hh, the block's columns
        const int64_t u = ub * kUnits;
        const int n = static_cast<int>(std::min(kUnits, H - u));
        cpublas::brgemm(rows, kUnits, GH, GH, kUnits, kUnits, false, step.dgh, panels + ub * GH * kUnits, tile.data(),
                        true);
        for (int64_t r = 0; r < rows; ++r) {
          float* d = dh + r * H + u;
          const V acc = V::loadu(tile.data() + r * kUnits);
          if constexpr (Cell::kReplaceDh) acc.store(d, n);
          else (acc + V::loadu(d, n)).store(d, n);
        }
      }
    }
    cpublas::brgemm_release(true);
  });
}

}  // namespace

bool bfloat16_brgemm_available() {
  static const bool available = [] {
    try {
      return cpublas::could_pack(at::kBFloat16);
    } catch (...) {
      return false;
    }
  }();
  return available;
}

at::Tensor pack_forward_weight_bfloat16(const at::Tensor& w_hh, int64_t gates) {
  const at::Tensor w = w_hh.contiguous();
  const int64_t H = w.size(1), nub = (H + kUnits - 1) / kUnits, panel_cols = gates * kUnits;
  TORCH_CHECK(w.scalar_type() == at::kBFloat16 && w.size(0) == gates * H && H % 2 == 0,
              "fastseq recurrent engine: bfloat16 w_hh must be [", gates, " * H, H] with H even, got ", w.sizes());
  at::Tensor packed = at::empty({nub, H, panel_cols}, w.options());
  const bf16* src = w.data_ptr<bf16>();
  bf16* dst = packed.data_ptr<bf16>();
  at::parallel_for(0, nub, 1, [&](int64_t ub0, int64_t ub1) {
    std::vector<bf16> panel(H * panel_cols);
    for (int64_t ub = ub0; ub < ub1; ++ub) {
      std::fill(panel.begin(), panel.end(), bf16(0.f));
      const int64_t n = std::min(kUnits, H - ub * kUnits);
      for (int64_t q = 0; q < gates; ++q)
        for (int64_t j = 0; j < n; ++j) {
          const bf16* row = src + (q * H + ub * kUnits + j) * H;  // weights of one gate column
          for (int64_t k = 0; k < H; ++k) panel[k * panel_cols + q * kUnits + j] = row[k];
        }
      cpublas::pack(H, panel_cols, panel_cols, panel_cols, at::kBFloat16, at::kBFloat16, panel.data(),
                    dst + ub * H * panel_cols);
    }
  });
  return packed;
}

void forward_bfloat16(const ForwardRun& run, const at::Tensor& packed, const float* bias, float* c) {
  const int64_t G = gate_count(run.kind), nub = (run.H + kUnits - 1) / kUnits;
  TORCH_CHECK(packed.scalar_type() == at::kBFloat16 && packed.numel() == nub * run.H * G * kUnits,
              "fastseq recurrent engine: the packed bfloat16 forward weight has ", packed.numel(),
              " elements, expected ", nub * run.H * G * kUnits);
  TORCH_CHECK(run.kind != CellKind::kGru || run.b_hn, "fastseq recurrent engine: a GRU needs b_hn");
  TORCH_CHECK(run.kind != CellKind::kLstm || c, "fastseq recurrent engine: an LSTM needs its cell state");
  switch (run.kind) {
    case CellKind::kLstm: return forward_steps<LstmPolicy>(run, packed, bias, c);
    case CellKind::kGru: return forward_steps<GruPolicy>(run, packed, bias, c);
    case CellKind::kRnnTanh: return forward_steps<RnnPolicy<false>>(run, packed, bias, c);
    case CellKind::kRnnRelu: return forward_steps<RnnPolicy<true>>(run, packed, bias, c);
  }
}

at::Tensor pack_backward_weight_bfloat16(const at::Tensor& w_hh) {
  const at::Tensor w = w_hh.contiguous();
  const int64_t H = w.size(1), K = w.size(0), nub = (H + kUnits - 1) / kUnits;
  TORCH_CHECK(w.scalar_type() == at::kBFloat16 && w.dim() == 2 && K % H == 0 && K % 2 == 0,
              "fastseq recurrent engine: bfloat16 w_hh must be [G * H, H] with G * H even, got ", w.sizes());
  at::Tensor packed = at::empty({nub, K, kUnits}, w.options());
  const bf16* src = w.data_ptr<bf16>();
  bf16* dst = packed.data_ptr<bf16>();
  at::parallel_for(0, nub, 1, [&](int64_t ub0, int64_t ub1) {
    std::vector<bf16> panel(K * kUnits);
    for (int64_t ub = ub0; ub < ub1; ++ub) {
      std::fill(panel.begin(), panel.end(), bf16(0.f));
      const int64_t n = std::min(kUnits, H - ub * kUnits);
      for (int64_t k = 0; k < K; ++k)  // the columns of W_hh that make the block's dh
        std::memcpy(panel.data() + k * kUnits, src + k * H + ub * kUnits, n * sizeof(bf16));
      cpublas::pack(K, kUnits, kUnits, kUnits, at::kBFloat16, at::kBFloat16, panel.data(), dst + ub * K * kUnits);
    }
  });
  return packed;
}

void backward_bfloat16(const BackwardRun& run, const at::Tensor& packed) {
  const int64_t GH = gate_count(run.kind) * run.H, nub = (run.H + kUnits - 1) / kUnits;
  TORCH_CHECK(packed.scalar_type() == at::kBFloat16 && packed.numel() == nub * GH * kUnits,
              "fastseq recurrent engine: the packed bfloat16 backward weight has ", packed.numel(),
              " elements, expected ", nub * GH * kUnits);
  if (run.B == 0 || run.H == 0 || run.s_begin >= run.s_end) return;
  switch (run.kind) {
    case CellKind::kLstm: return backward_steps<LstmPolicy>(run, packed);
    case CellKind::kGru: return backward_steps<GruPolicy>(run, packed);
    case CellKind::kRnnTanh: return backward_steps<RnnPolicy<false>>(run, packed);
    case CellKind::kRnnRelu: return backward_steps<RnnPolicy<true>>(run, packed);
  }
}

#else  // no AVX-512 in this build (FASTSEQ_PORTABLE=1 or another ISA): bfloat16 computes in float32

bool bfloat16_brgemm_available() { return false; }
at::Tensor pack_forward_weight_bfloat16(const at::Tensor& w_hh, int64_t) {
  TORCH_CHECK(false, "fastseq recurrent engine: this build has no bfloat16 steps");
  return w_hh;
}
void forward_bfloat16(const ForwardRun&, const at::Tensor&, const float*, float*) {
  TORCH_CHECK(false, "fastseq recurrent engine: this build has no bfloat16 steps");
}
at::Tensor pack_backward_weight_bfloat16(const at::Tensor& w_hh) {
  TORCH_CHECK(false, "fastseq recurrent engine: this build has no bfloat16 steps");
  return w_hh;
}
void backward_bfloat16(const BackwardRun&, const at::Tensor&) {
  TORCH_CHECK(false, "fastseq recurrent engine: this build has no bfloat16 steps");
}

#endif

bool engine_runs_bfloat16(const at::Tensor& input, int64_t hidden_size) {
  return input.is_cpu() && input.scalar_type() == at::kBFloat16 && input.dim() == 3 &&
         input.size(0) >= kMinEngineSteps && hidden_size % 2 == 0 && hidden_size > 0 && bfloat16_brgemm_available();
}

}  // namespace recurrent
}  // namespace fastseq
