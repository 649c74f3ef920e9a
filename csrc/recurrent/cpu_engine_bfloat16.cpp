// The bfloat16 LSTM steps of the CPU sequence engine on oneDNN's brgemm micro-kernels
// (at::native::cpublas, AMX or AVX512-BF16 where the CPU has them: the library chooses at run
// time). Per step and thread, for each of its blocks of 16 units: one brgemm h_{t-1} [rows, H]
// (bfloat16) x the block's packed W_hh panel [H, 4 x 16] (VNNI) into a float32 tile, then the
// gate math on that tile while it is in L1, with the cell state in float32; h is rounded to
// bfloat16 (torch's bf16 LSTM rounds it too: the next step's GEMM reads bfloat16). Training
// also keeps the activated gates and the cell states in float32; its backward steps run the
// pointwise backward in float32 and write dG in bfloat16, then per block of 16 units one
// brgemm dG_t [rows, 4H] x the block's packed W_hh columns [4H, 16] into float32 dh.
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

#include "common/cpu_activations.h"
#include "lstm/lstm_math.h"
#include "recurrent/cpu_team.h"

#if defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

namespace fastseq {
namespace recurrent {

#if defined(CPU_CAPABILITY_AVX512)
namespace {

namespace cpublas = at::native::cpublas;
using V = at::vec::Vectorized<float>;
using bf16 = c10::BFloat16;
constexpr int64_t kUnits = 16;             // units per block: one float vector per gate
constexpr int64_t kPanel = 4 * kUnits;     // the block's columns, gates i, f, g, o side by side

inline __mmask16 lanes(int n) { return static_cast<__mmask16>((1u << n) - 1u); }

// n (<= 16) bfloat16 values <-> float lanes, through ATen's conversions (round to nearest
// even, NaN kept a NaN), with masked loads and stores for a last, partial block of units.
inline V load_bf16(const bf16* p, int n) {
  __m512 o;
  at::vec::cvtbf16_fp32(_mm256_maskz_loadu_epi16(lanes(n), p), o);
  return V(o);
}

inline void store_bf16(bf16* p, const V& v, int n) {
  _mm256_mask_storeu_epi16(p, lanes(n), at::vec::cvtfp32_bf16(__m512(v)));
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

at::Tensor pack_forward_weight_bfloat16(const at::Tensor& w_hh) {
  const at::Tensor w = w_hh.contiguous();
  const int64_t H = w.size(1), nub = (H + kUnits - 1) / kUnits;
  TORCH_CHECK(w.scalar_type() == at::kBFloat16 && w.size(0) == 4 * H && H % 2 == 0,
              "fastseq recurrent engine: bfloat16 w_hh must be [4 * H, H] with H even, got ", w.sizes());
  at::Tensor packed = at::empty({nub, H, kPanel}, w.options());
  const bf16* src = w.data_ptr<bf16>();
  bf16* dst = packed.data_ptr<bf16>();
  at::parallel_for(0, nub, 1, [&](int64_t ub0, int64_t ub1) {
    std::vector<bf16> panel(H * kPanel);
    for (int64_t ub = ub0; ub < ub1; ++ub) {
      std::fill(panel.begin(), panel.end(), bf16(0.f));
      const int64_t n = std::min(kUnits, H - ub * kUnits);
      for (int64_t q = 0; q < 4; ++q)
        for (int64_t j = 0; j < n; ++j) {
          const bf16* row = src + (q * H + ub * kUnits + j) * H;  // weights of one gate column
          for (int64_t k = 0; k < H; ++k) panel[k * kPanel + q * kUnits + j] = row[k];
        }
      cpublas::pack(H, kPanel, kPanel, kPanel, at::kBFloat16, at::kBFloat16, panel.data(), dst + ub * H * kPanel);
    }
  });
  return packed;
}

void forward_bfloat16_lstm(const ForwardRun& run, const at::Tensor& packed, const float* bias, float* c) {
  const int64_t T_ = run.T, B = run.B, H = run.H, GH = 4 * H, nub = (H + kUnits - 1) / kUnits;
  const bf16* const gx = static_cast<const bf16*>(run.gx);
  bf16* const hbuf = static_cast<bf16*>(run.h);
  bf16* const out = static_cast<bf16*>(run.out);
  const bf16* const panels = packed.data_ptr<bf16>();
  float* const gates = static_cast<float*>(run.gates);  // training: [T, B, 4H] float32, else nullptr
  float* const cells = static_cast<float*>(run.saved);  // training: [T, B, H] float32, else nullptr
  const int threads = team_size_for(B * GH * H);
  run_team(threads, [&](int tid, int team, StepBarrier& barrier) {
    std::vector<float> tile(B * kPanel);
    int64_t ub0, ub1;
    split_range(nub, tid, team, ub0, ub1);
    for (int64_t s = run.s_begin; s < run.s_end; ++s) {
      const int64_t t = run.reverse ? T_ - 1 - s : s, rows = run.rows ? run.rows[t] : B;
      const bf16* h_prev = hbuf + (s & 1) * B * H;
      bf16* h_next = hbuf + ((s + 1) & 1) * B * H;
      const bf16* g_t = gx + (t - run.gx_t0) * B * GH;
      for (int64_t ub = ub0; ub < ub1; ++ub) {
        const int64_t u = ub * kUnits;
        const int n = static_cast<int>(std::min(kUnits, H - u));
        if (rows < B)  // rows not started (reverse) or finished: their state carries over
          for (int64_t r = rows; r < B; ++r) {
            std::memcpy(h_next + r * H + u, h_prev + r * H + u, n * sizeof(bf16));
            // backward reads a row's c_prev from the step before, inactive or not
            if (cells) std::memcpy(cells + (t * B + r) * H + u, c + r * H + u, n * sizeof(float));
          }
        if (rows == 0) continue;
        cpublas::brgemm(rows, kPanel, H, H, kPanel, kPanel, false, h_prev, panels + ub * H * kPanel, tile.data(), true);
        const V bi = V::loadu(bias + u, n), bf = V::loadu(bias + H + u, n), bg = V::loadu(bias + 2 * H + u, n),
                bo = V::loadu(bias + 3 * H + u, n);
        for (int64_t r = 0; r < rows; ++r) {
          const float* acc = tile.data() + r * kPanel;
          const bf16* g = g_t + r * GH + u;
          V i = V::loadu(acc) + load_bf16(g, n) + bi, f = V::loadu(acc + kUnits) + load_bf16(g + H, n) + bf,
            gg = V::loadu(acc + 2 * kUnits) + load_bf16(g + 2 * H, n) + bg,
            o = V::loadu(acc + 3 * kUnits) + load_bf16(g + 3 * H, n) + bo, c_new, h;
          float* cp = c + r * H + u;
          lstm::gates_forward<VecActivations>(i, f, gg, o, V::loadu(cp, n), c_new, h);
          c_new.store(cp, n);
          if (gates) {
            float* gr = gates + (t * B + r) * GH + u;
            i.store(gr, n), f.store(gr + H, n), gg.store(gr + 2 * H, n), o.store(gr + 3 * H, n);
            c_new.store(cells + (t * B + r) * H + u, n);
          }
          store_bf16(out + t * B * H + r * H + u, h, n);
          store_bf16(h_next + r * H + u, h, n);
        }
      }
      barrier.wait();
    }
    cpublas::brgemm_release(true);
  });
}

at::Tensor pack_backward_weight_bfloat16(const at::Tensor& w_hh) {
  const at::Tensor w = w_hh.contiguous();
  const int64_t H = w.size(1), K = 4 * H, nub = (H + kUnits - 1) / kUnits;
  TORCH_CHECK(w.scalar_type() == at::kBFloat16 && w.size(0) == K && H % 2 == 0,
              "fastseq recurrent engine: bfloat16 w_hh must be [4 * H, H] with H even, got ", w.sizes());
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

void backward_bfloat16_lstm(const BackwardRun& run, const at::Tensor& packed) {
  const int64_t T_ = run.T, B = run.B, H = run.H, GH = 4 * H, nub = (H + kUnits - 1) / kUnits;
  TORCH_CHECK(packed.scalar_type() == at::kBFloat16 && packed.numel() == nub * GH * kUnits,
              "fastseq recurrent engine: the packed bfloat16 backward weight has ", packed.numel(),
              " elements, expected ", nub * GH * kUnits);
  if (B == 0 || H == 0 || run.s_begin >= run.s_end) return;
  const float* const grad_out = static_cast<const float*>(run.grad_out);
  const float* const gates = static_cast<const float*>(run.gates);
  const float* const cells = static_cast<const float*>(run.cells);
  float* const dh = static_cast<float*>(run.dh);
  float* const dc = static_cast<float*>(run.dc);
  bf16* const dg_all = static_cast<bf16*>(run.dgi);
  const bf16* const panels = packed.data_ptr<bf16>();
  const int threads = team_size_for(B * GH * H);
  // Each thread owns blocks of units for all rows and steps: it writes their dG columns and
  // their dh columns, so after a step's GEMM its next pointwise reads only its own writes,
  // and one barrier per step (dG complete before any GEMM reads it) suffices. dG of each
  // step has its own slot of dgi, so a thread ahead never overwrites what another reads.
  run_team(threads, [&](int tid, int team, StepBarrier& barrier) {
    std::vector<float> tile(B * kUnits);
    int64_t ub0, ub1;
    split_range(nub, tid, team, ub0, ub1);
    for (int64_t s = run.s_begin; s < run.s_end; ++s) {
      const int64_t t = run.reverse ? s : T_ - 1 - s, rows = run.rows ? run.rows[t] : B;
      if (rows == 0) continue;
      const bool forward_first = run.reverse ? t == T_ - 1 : t == 0;
      const int64_t t_prev = run.reverse ? t + 1 : t - 1;
      const float* c_t = cells + t * B * H;
      const float* c_prev = forward_first ? static_cast<const float*>(run.c0) : cells + t_prev * B * H;
      const float* g_t = gates + t * B * GH;
      const float* go_t = grad_out + t * B * H;
      bf16* dg_t = dg_all + (t - run.buf_t0) * B * GH;
      for (int64_t ub = ub0; ub < ub1; ++ub) {
        const int64_t u = ub * kUnits;
        const int n = static_cast<int>(std::min(kUnits, H - u));
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t o1 = r * H + u;
          const float* g = g_t + r * GH + u;
          V dc_v = V::loadu(dc + o1, n), di, df, dgg, d_o, h_pre;
          lstm::gates_backward<VecActivations>(V::loadu(g, n), V::loadu(g + H, n), V::loadu(g + 2 * H, n),
                                               V::loadu(g + 3 * H, n), V::loadu(c_t + o1, n),
                                               V::loadu(c_prev + o1, n), V::loadu(dh + o1, n) + V::loadu(go_t + o1, n),
                                               dc_v, di, df, dgg, d_o, h_pre);
          dc_v.store(dc + o1, n);
          bf16* d = dg_t + r * GH + u;
          store_bf16(d, di, n), store_bf16(d + H, df, n), store_bf16(d + 2 * H, dgg, n), store_bf16(d + 3 * H, d_o, n);
        }
      }
      barrier.wait();
      if (s == run.s_end - 1 && !run.need_last_dh && forward_first) continue;
      for (int64_t ub = ub0; ub < ub1; ++ub) {  // dh_{t-1} = dG_t W_hh, the block's columns
        const int64_t u = ub * kUnits;
        const int n = static_cast<int>(std::min(kUnits, H - u));
        cpublas::brgemm(rows, kUnits, GH, GH, kUnits, kUnits, false, dg_t, panels + ub * GH * kUnits, tile.data(),
                        true);
        for (int64_t r = 0; r < rows; ++r) V::loadu(tile.data() + r * kUnits).store(dh + r * H + u, n);
      }
    }
    cpublas::brgemm_release(true);
  });
}

#else  // no AVX-512 in this build (FASTSEQ_PORTABLE=1 or another ISA): bfloat16 computes in float32

bool bfloat16_brgemm_available() { return false; }
at::Tensor pack_forward_weight_bfloat16(const at::Tensor& w_hh) {
  TORCH_CHECK(false, "fastseq recurrent engine: this build has no bfloat16 steps");
  return w_hh;
}
void forward_bfloat16_lstm(const ForwardRun&, const at::Tensor&, const float*, float*) {
  TORCH_CHECK(false, "fastseq recurrent engine: this build has no bfloat16 steps");
}
at::Tensor pack_backward_weight_bfloat16(const at::Tensor& w_hh) {
  TORCH_CHECK(false, "fastseq recurrent engine: this build has no bfloat16 steps");
  return w_hh;
}
void backward_bfloat16_lstm(const BackwardRun&, const at::Tensor&) {
  TORCH_CHECK(false, "fastseq recurrent engine: this build has no bfloat16 steps");
}

#endif

bool engine_runs_bfloat16(const at::Tensor& input, int64_t hidden_size) {
  return input.is_cpu() && input.scalar_type() == at::kBFloat16 && input.dim() == 3 &&
         input.size(0) >= kMinEngineSteps && hidden_size % 2 == 0 && hidden_size > 0 && bfloat16_brgemm_available();
}

}  // namespace recurrent
}  // namespace fastseq
