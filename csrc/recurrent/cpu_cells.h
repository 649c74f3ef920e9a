// Cell policies of the CPU sequence engine: per cell, the number of gates and the pointwise
// forward / backward of one block of up to W units of one row, on at::vec vectors, running
// the formulas of lstm_math.h / gru_rnn_math.h under the one activation policy
// (common/cpu_activations.h). A new cell (LayerNorm-LSTM, a user's cell) is a new policy
// here, not a new loop. The policies compute in T (float32 / float64) and read and write the
// layer's activations (projected input, h, outputs, dG) in S: S = T, or bfloat16 for the
// engine's bfloat16 steps (cpu_engine_bfloat16.cpp), converted on load and rounded on store.
// Include after common/cpu_vec.h.
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>

#include "common/cpu_activations.h"
#include "gru_rnn/gru_rnn_math.h"
#include "lstm/lstm_math.h"
#include "recurrent/cpu_engine.h"
#include "recurrent/cpu_step_gemm.h"

namespace fastseq {
namespace recurrent {

// n (<= W) values of S as a vector of T, and back.
template <class T>
C10_ALWAYS_INLINE Vec<T> load_as(const T* p, int n) {
  return Vec<T>::loadu(p, n);
}
template <class T>
C10_ALWAYS_INLINE void store_as(T* p, const Vec<T>& v, int n) {
  v.store(p, n);
}

#if defined(CPU_CAPABILITY_AVX512)
// bfloat16 <-> float lanes through ATen's conversions (round to nearest even, NaN kept a
// NaN), masked for a last, partial block of units.
C10_ALWAYS_INLINE __mmask16 first_lanes(int n) { return static_cast<__mmask16>((1u << n) - 1u); }
C10_ALWAYS_INLINE Vec<float> load_as(const c10::BFloat16* p, int n) {
  __m512 o;
  at::vec::cvtbf16_fp32(_mm256_maskz_loadu_epi16(first_lanes(n), p), o);
  return Vec<float>(o);
}
C10_ALWAYS_INLINE void store_as(c10::BFloat16* p, const Vec<float>& v, int n) {
  _mm256_mask_storeu_epi16(p, first_lanes(n), at::vec::cvtfp32_bf16(__m512(v)));
}
#endif

// What one forward step of one direction hands to the policy (row stride H unless noted).
template <class T, class S = T>
struct ForwardStep {
  const S* gx;       // [B, G*H] input projection x W_ih^T of this step, or nullptr (the
                     // engine accumulated it with the recurrent term)
  const T* bias;     // [G*H] added to the input term (b_ih + b_hh; GRU: all but b_hn), or nullptr
  T* gates;          // LSTM training: [B, 4H] where the activated gates go (may alias gx)
  const S* h_prev;   // [B, H]
  S* h_next;         // [B, H]
  S* out;            // [B, H]
  T* c;              // LSTM cell state
  T* saved;          // LSTM cells[t] [B, H], GRU ws[t] [B, 4H], or nullptr (inference)
  const T* b_hn;     // GRU
  int64_t H;

  // The input part of the pre-activation of gate column `col` (W lanes, n valid) of row r:
  // the projected input (when not accumulated in the GEMM) plus the bias.
  C10_ALWAYS_INLINE Vec<T> input_term(int64_t r, int64_t col, int64_t row_width, int n) const {
    Vec<T> v = gx ? load_as(gx + r * row_width + col, n) : Vec<T>(T(0));
    return bias ? v + Vec<T>::loadu(bias + col, n) : v;
  }
};

template <class T, class S = T>
struct BackwardStep {
  const S* grad_out;  // [B, H]
  T* dh;              // [B, H] dL/dh_t from later steps (in), then the direct part (GRU)
  T* dc;              // LSTM
  const T* gates;     // LSTM [B, 4H] activated
  const T* c;         // LSTM cells[t]
  const T* c_prev;    // LSTM cells[t_prev] or c0
  const T* ws;        // GRU [B, 4H]
  const S* h_prev;    // GRU [B, H]
  const S* h_new;     // RNN out[t]
  S* dgi;             // [B, G*H]
  S* dgh;             // GRU [B, 3H]
  int64_t H;
};

// What backward step t (a time index) of `run` reads and writes: per-step slices of the
// run's buffers for a G-gate cell, computing in T with activations stored in S.
template <int G, class T, class S>
BackwardStep<T, S> backward_step_at(const BackwardRun& run, int64_t t) {
  const int64_t B = run.B, H = run.H, GH = G * H, tb = t - run.buf_t0;
  BackwardStep<T, S> step{static_cast<const S*>(run.grad_out) + t * B * H, static_cast<T*>(run.dh),
                          static_cast<T*>(run.dc), nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                          static_cast<S*>(run.dgi) + tb * B * GH, static_cast<S*>(run.dgh) + tb * B * GH, H};
  if constexpr (G == 4) {
    const bool forward_first = run.reverse ? t == run.T - 1 : t == 0;
    const int64_t t_prev = run.reverse ? t + 1 : t - 1;
    const T* cells = static_cast<const T*>(run.cells);
    step.gates = static_cast<const T*>(run.gates) + t * B * GH;
    step.c = cells + t * B * H;
    step.c_prev = forward_first ? static_cast<const T*>(run.c0) : cells + t_prev * B * H;
  } else if constexpr (G == 3) {
    step.ws = static_cast<const T*>(run.ws) + t * B * 4 * H;
    step.h_prev = static_cast<const S*>(run.h_prev) + tb * B * H;
  } else {
    step.h_new = static_cast<const S*>(run.out) + t * B * H;
  }
  return step;
}

struct LstmPolicy {
  static constexpr int kGates = 4;
  // Each gate's pre-activation is x W_ih^T + h W_hh^T + b: the engine may accumulate both
  // products in the same registers (its fused input projection).
  static constexpr bool kSumsInputAndState = true;
  // dh_{t-1} = dG W_hh replaces dh (the output gradient is added in the next pointwise).
  static constexpr bool kReplaceDh = true;

  template <class T, class S>
  static C10_ALWAYS_INLINE void forward(const ForwardStep<T, S>& s, int64_t r, int64_t u, int n,
                                        const Vec<T>* acc) {
    using V = Vec<T>;
    const int64_t H = s.H;
    V i = acc[0] + s.input_term(r, u, 4 * H, n), f = acc[1] + s.input_term(r, H + u, 4 * H, n),
      gg = acc[2] + s.input_term(r, 2 * H + u, 4 * H, n), o = acc[3] + s.input_term(r, 3 * H + u, 4 * H, n), c, h;
    T* cp = s.c + r * H + u;
    lstm::gates_forward<VecActivations>(i, f, gg, o, V::loadu(cp, n), c, h);
    c.store(cp, n);
    if (s.saved) {
      T* g = s.gates + r * 4 * H + u;
      i.store(g, n), f.store(g + H, n), gg.store(g + 2 * H, n), o.store(g + 3 * H, n);
      c.store(s.saved + r * H + u, n);
    }
    store_as(s.out + r * H + u, h, n);
    store_as(s.h_next + r * H + u, h, n);
  }

  template <class T, class S>
  static C10_ALWAYS_INLINE void backward(const BackwardStep<T, S>& s, int64_t r, int64_t u, int n) {
    using V = Vec<T>;
    const int64_t H = s.H, o1 = r * H + u;
    const T* g = s.gates + r * 4 * H + u;
    const V dh = V::loadu(s.dh + o1, n) + load_as(s.grad_out + o1, n);
    V dc = V::loadu(s.dc + o1, n), di, df, dg, d_o, h_pre;
    lstm::gates_backward<VecActivations>(V::loadu(g, n), V::loadu(g + H, n), V::loadu(g + 2 * H, n),
                                         V::loadu(g + 3 * H, n), V::loadu(s.c + o1, n),
                                         V::loadu(s.c_prev + o1, n), dh, dc, di, df, dg, d_o, h_pre);
    dc.store(s.dc + o1, n);
    S* d = s.dgi + r * 4 * H + u;
    store_as(d, di, n), store_as(d + H, df, n), store_as(d + 2 * H, dg, n), store_as(d + 3 * H, d_o, n);
  }
};

struct GruPolicy {
  static constexpr int kGates = 3;
  // n = tanh(gi_n + r * gh_n) keeps the two products apart: no fused input projection.
  static constexpr bool kSumsInputAndState = false;
  // dh_{t-1} = z * dh_t (the direct part, written by backward) + dG_h W_hh.
  static constexpr bool kReplaceDh = false;

  template <class T, class S>
  static C10_ALWAYS_INLINE void forward(const ForwardStep<T, S>& s, int64_t r, int64_t u, int n,
                                        const Vec<T>* acc) {
    using V = Vec<T>;
    const int64_t H = s.H;
    const V gh_n = acc[2] + V::loadu(s.b_hn + u, n);
    V rg, z, ng, h_new;
    gru_rnn::gru_forward_point<VecActivations>(s.input_term(r, u, 3 * H, n), s.input_term(r, H + u, 3 * H, n),
                                               s.input_term(r, 2 * H + u, 3 * H, n),
                                               acc[0], acc[1], gh_n, load_as(s.h_prev + r * H + u, n),
                                               rg, z, ng, h_new);
    if (s.saved) {
      T* w = s.saved + r * 4 * H + u;
      rg.store(w, n), z.store(w + H, n), ng.store(w + 2 * H, n), gh_n.store(w + 3 * H, n);
    }
    store_as(s.out + r * H + u, h_new, n);
    store_as(s.h_next + r * H + u, h_new, n);
  }

  template <class T, class S>
  static C10_ALWAYS_INLINE void backward(const BackwardStep<T, S>& s, int64_t r, int64_t u, int n) {
    using V = Vec<T>;
    const int64_t H = s.H, o1 = r * H + u;
    const T* w = s.ws + r * 4 * H + u;
    V d_ar, d_az, d_an, d_ghn, dh_direct;
    gru_rnn::gru_backward_point(V::loadu(s.dh + o1, n) + load_as(s.grad_out + o1, n),
                                load_as(s.h_prev + o1, n), V::loadu(w, n), V::loadu(w + H, n),
                                V::loadu(w + 2 * H, n), V::loadu(w + 3 * H, n), d_ar, d_az, d_an,
                                d_ghn, dh_direct);
    S* di = s.dgi + r * 3 * H + u;
    S* dhh = s.dgh + r * 3 * H + u;
    store_as(di, d_ar, n), store_as(di + H, d_az, n), store_as(di + 2 * H, d_an, n);
    store_as(dhh, d_ar, n), store_as(dhh + H, d_az, n), store_as(dhh + 2 * H, d_ghn, n);
    dh_direct.store(s.dh + o1, n);
  }
};

template <bool kRelu>
struct RnnPolicy {
  static constexpr int kGates = 1;
  static constexpr bool kSumsInputAndState = true;
  static constexpr bool kReplaceDh = true;

  template <class T, class S>
  static C10_ALWAYS_INLINE void forward(const ForwardStep<T, S>& s, int64_t r, int64_t u, int n,
                                        const Vec<T>* acc) {
    using V = Vec<T>;
    const int64_t o1 = r * s.H + u;
    const V h = gru_rnn::rnn_forward_point<kRelu, VecActivations>(s.input_term(r, u, s.H, n), acc[0]);
    store_as(s.out + o1, h, n);
    store_as(s.h_next + o1, h, n);
  }

  template <class T, class S>
  static C10_ALWAYS_INLINE void backward(const BackwardStep<T, S>& s, int64_t r, int64_t u, int n) {
    using V = Vec<T>;
    const int64_t o1 = r * s.H + u;
    store_as(s.dgi + o1,
             gru_rnn::rnn_backward_point<kRelu, VecActivations>(V::loadu(s.dh + o1, n) + load_as(s.grad_out + o1, n),
                                                                load_as(s.h_new + o1, n)),
             n);
  }
};

}  // namespace recurrent
}  // namespace fastseq
