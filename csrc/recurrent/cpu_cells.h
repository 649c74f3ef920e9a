// Cell policies of the CPU sequence engine: per cell, the number of gates and the pointwise
// forward / backward of one block of up to W units of one row, on at::vec vectors, running
// the formulas of lstm_math.h / gru_rnn_math.h under the one activation policy
// (common/cpu_activations.h). A new cell (LayerNorm-LSTM, a user's cell) is a new policy
// here, not a new loop. Include after common/cpu_vec.h.
#pragma once

#include <cstdint>

#include "common/cpu_activations.h"
#include "gru_rnn/gru_rnn_math.h"
#include "lstm/lstm_math.h"
#include "recurrent/cpu_step_gemm.h"

namespace fastseq {
namespace recurrent {

// What one forward step of one direction hands to the policy (row stride H unless noted).
template <class T>
struct ForwardStep {
  const T* gx;       // [B, G*H] input projection x W_ih^T of this step, or nullptr (the
                     // engine accumulated it with the recurrent term)
  const T* bias;     // [G*H] added to the input term (b_ih + b_hh; GRU: all but b_hn), or nullptr
  T* gates;          // LSTM training: [B, 4H] where the activated gates go (may alias gx)
  const T* h_prev;   // [B, H]
  T* h_next;         // [B, H]
  T* out;            // [B, H]
  T* c;              // LSTM cell state
  T* saved;          // LSTM cells[t] [B, H], GRU ws[t] [B, 4H], or nullptr (inference)
  const T* b_hn;     // GRU
  int64_t H;

  // The input part of the pre-activation of gate column `col` (W lanes, n valid) of row r:
  // the projected input (when not accumulated in the GEMM) plus the bias.
  C10_ALWAYS_INLINE Vec<T> input_term(int64_t r, int64_t col, int64_t row_width, int n) const {
    Vec<T> v = gx ? Vec<T>::loadu(gx + r * row_width + col, n) : Vec<T>(T(0));
    return bias ? v + Vec<T>::loadu(bias + col, n) : v;
  }
};

template <class T>
struct BackwardStep {
  const T* grad_out;  // [B, H]
  T* dh;              // [B, H] dL/dh_t from later steps (in), then the direct part (GRU)
  T* dc;              // LSTM
  const T* gates;     // LSTM [B, 4H] activated
  const T* c;         // LSTM cells[t]
  const T* c_prev;    // LSTM cells[t_prev] or c0
  const T* ws;        // GRU [B, 4H]
  const T* h_prev;    // GRU [B, H]
  const T* h_new;     // RNN out[t]
  T* dgi;             // [B, G*H]
  T* dgh;             // GRU [B, 3H]
  int64_t H;
};

struct LstmPolicy {
  static constexpr int kGates = 4;
  // Each gate's pre-activation is x W_ih^T + h W_hh^T + b: the engine may accumulate both
  // products in the same registers (its fused input projection).
  static constexpr bool kSumsInputAndState = true;
  // dh_{t-1} = dG W_hh replaces dh (the output gradient is added in the next pointwise).
  static constexpr bool kReplaceDh = true;

  template <class T>
  static C10_ALWAYS_INLINE void forward(const ForwardStep<T>& s, int64_t r, int64_t u, int n,
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
    h.store(s.out + r * H + u, n);
    h.store(s.h_next + r * H + u, n);
  }

  template <class T>
  static C10_ALWAYS_INLINE void backward(const BackwardStep<T>& s, int64_t r, int64_t u, int n) {
    using V = Vec<T>;
    const int64_t H = s.H, o1 = r * H + u;
    const T* g = s.gates + r * 4 * H + u;
    const V dh = V::loadu(s.dh + o1, n) + V::loadu(s.grad_out + o1, n);
    V dc = V::loadu(s.dc + o1, n), di, df, dg, d_o, h_pre;
    lstm::gates_backward<VecActivations>(V::loadu(g, n), V::loadu(g + H, n), V::loadu(g + 2 * H, n),
                                         V::loadu(g + 3 * H, n), V::loadu(s.c + o1, n),
                                         V::loadu(s.c_prev + o1, n), dh, dc, di, df, dg, d_o, h_pre);
    dc.store(s.dc + o1, n);
    T* d = s.dgi + r * 4 * H + u;
    di.store(d, n), df.store(d + H, n), dg.store(d + 2 * H, n), d_o.store(d + 3 * H, n);
  }
};

struct GruPolicy {
  static constexpr int kGates = 3;
  // n = tanh(gi_n + r * gh_n) keeps the two products apart: no fused input projection.
  static constexpr bool kSumsInputAndState = false;
  // dh_{t-1} = z * dh_t (the direct part, written by backward) + dG_h W_hh.
  static constexpr bool kReplaceDh = false;

  template <class T>
  static C10_ALWAYS_INLINE void forward(const ForwardStep<T>& s, int64_t r, int64_t u, int n,
                                        const Vec<T>* acc) {
    using V = Vec<T>;
    const int64_t H = s.H;
    const V gh_n = acc[2] + V::loadu(s.b_hn + u, n);
    V rg, z, ng, h_new;
    gru_rnn::gru_forward_point<VecActivations>(s.input_term(r, u, 3 * H, n), s.input_term(r, H + u, 3 * H, n),
                                               s.input_term(r, 2 * H + u, 3 * H, n),
                                               acc[0], acc[1], gh_n, V::loadu(s.h_prev + r * H + u, n),
                                               rg, z, ng, h_new);
    if (s.saved) {
      T* w = s.saved + r * 4 * H + u;
      rg.store(w, n), z.store(w + H, n), ng.store(w + 2 * H, n), gh_n.store(w + 3 * H, n);
    }
    h_new.store(s.out + r * H + u, n);
    h_new.store(s.h_next + r * H + u, n);
  }

  template <class T>
  static C10_ALWAYS_INLINE void backward(const BackwardStep<T>& s, int64_t r, int64_t u, int n) {
    using V = Vec<T>;
    const int64_t H = s.H, o1 = r * H + u;
    const T* w = s.ws + r * 4 * H + u;
    V d_ar, d_az, d_an, d_ghn, dh_direct;
    gru_rnn::gru_backward_point(V::loadu(s.dh + o1, n) + V::loadu(s.grad_out + o1, n),
                                V::loadu(s.h_prev + o1, n), V::loadu(w, n), V::loadu(w + H, n),
                                V::loadu(w + 2 * H, n), V::loadu(w + 3 * H, n), d_ar, d_az, d_an,
                                d_ghn, dh_direct);
    T* di = s.dgi + r * 3 * H + u;
    T* dhh = s.dgh + r * 3 * H + u;
    d_ar.store(di, n), d_az.store(di + H, n), d_an.store(di + 2 * H, n);
    d_ar.store(dhh, n), d_az.store(dhh + H, n), d_ghn.store(dhh + 2 * H, n);
    dh_direct.store(s.dh + o1, n);
  }
};

template <bool kRelu>
struct RnnPolicy {
  static constexpr int kGates = 1;
  static constexpr bool kSumsInputAndState = true;
  static constexpr bool kReplaceDh = true;

  template <class T>
  static C10_ALWAYS_INLINE void forward(const ForwardStep<T>& s, int64_t r, int64_t u, int n,
                                        const Vec<T>* acc) {
    using V = Vec<T>;
    const int64_t o1 = r * s.H + u;
    const V h = gru_rnn::rnn_forward_point<kRelu, VecActivations>(s.input_term(r, u, s.H, n), acc[0]);
    h.store(s.out + o1, n);
    h.store(s.h_next + o1, n);
  }

  template <class T>
  static C10_ALWAYS_INLINE void backward(const BackwardStep<T>& s, int64_t r, int64_t u, int n) {
    using V = Vec<T>;
    const int64_t o1 = r * s.H + u;
    gru_rnn::rnn_backward_point<kRelu, VecActivations>(
        V::loadu(s.dh + o1, n) + V::loadu(s.grad_out + o1, n), V::loadu(s.h_new + o1, n))
        .store(s.dgi + o1, n);
  }
};

}  // namespace recurrent
}  // namespace fastseq
