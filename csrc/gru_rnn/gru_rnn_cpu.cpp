// CPU backend of the GRU / RNN steps: one fused, vectorised (at::vec) pass per time step
// over the active rows, running the formulas of gru_rnn_math.h; threads for large steps.
// (The scalar policy of gru_rnn_math.h serves the CUDA kernels.)
#include "common/cpu_vec.h"  // first: selects the SIMD ISA for every ATen vec header

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <type_traits>

#include "common/cpu_activations.h"
#include "gru_rnn/gru_rnn_backend.h"
#include "gru_rnn/gru_rnn_math.h"

namespace fastseq {
namespace gru_rnn {
namespace {

using at::vec::Vectorized;

// The CPU kernels' one activation policy (common/cpu_activations.h).
using VecMath = fastseq::VecActivations;

// Every dtype runs SIMD vectors of its accumulation type: float and double directly,
// bfloat16 converted to float on load and rounded back on store.
template <class T>
using AccVec = Vectorized<at::opmath_type<T>>;

template <class T>
inline AccVec<T> load_acc(const T* p, int64_t n) {
  using A = at::opmath_type<T>;
  if constexpr (std::is_same_v<T, A>) {
    return AccVec<T>::loadu(p, n);
  } else {
    __at_align__ A buf[AccVec<T>::size()] = {};
    for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<A>(p[i]);
    return AccVec<T>::loadu(buf);
  }
}

template <class T>
inline void store_acc(const AccVec<T>& v, T* p, int64_t n) {
  using A = at::opmath_type<T>;
  if constexpr (std::is_same_v<T, A>) {
    v.store(p, n);
  } else {
    __at_align__ A buf[AccVec<T>::size()];
    v.store(buf);
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<T>(buf[i]);
  }
}

// A step's pointwise pass is small (rows * H elements); spreading it over threads only pays
// once it is large enough to amortise the fork.
constexpr int64_t kParallelElements = 1 << 15;

template <class F>
void for_each_row(int64_t rows, int64_t hidden, const F& row_fn) {
  const int64_t grain = std::max<int64_t>(1, kParallelElements / std::max<int64_t>(hidden, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) row_fn(b);
  });
}

// Calls chunk(j, n) over [0, H) in SIMD-width pieces; n < width only for the tail.
template <class T, class F>
inline void for_each_chunk(int64_t H, const F& chunk) {
  constexpr int64_t W = AccVec<T>::size();
  for (int64_t j = 0; j < H; j += W) chunk(j, std::min<int64_t>(W, H - j));
}

template <class T>
void gru_forward_step(const GruStepForward& p) {
  using acc_t = at::opmath_type<T>;
  using V = AccVec<T>;
  const int64_t H = p.hidden;
  const T* gi = static_cast<const T*>(p.gi);
  const T* gh = static_cast<const T*>(p.gh);
  const T* bi = static_cast<const T*>(p.b_ih);
  const T* bh = static_cast<const T*>(p.b_hh);
  const T* h_in = static_cast<const T*>(p.h_in);
  T* h_out = static_cast<T*>(p.h_out);
  T* out = static_cast<T*>(p.out);
  acc_t* ws = static_cast<acc_t*>(p.ws);
  for_each_row(p.rows, H, [&](int64_t b) {
    const T* gi_b = gi + b * 3 * H;
    const T* gh_b = gh + b * 3 * H;
    const T* h_in_b = h_in + b * H;
    T* h_b = h_out + b * H;
    T* out_b = out + b * H;
    acc_t* ws_b = ws ? ws + b * 4 * H : nullptr;
    for_each_chunk<T>(H, [&](int64_t j, int64_t n) {
      auto ld = [&](const T* base, int64_t gate) { return load_acc(base + gate * H + j, n); };
      V r, z, g, h_new;
      const V gh_n = ld(gh_b, 2) + ld(bh, 2);
      gru_forward_point<VecMath>(ld(gi_b, 0) + ld(bi, 0), ld(gi_b, 1) + ld(bi, 1), ld(gi_b, 2) + ld(bi, 2),
                                 ld(gh_b, 0) + ld(bh, 0), ld(gh_b, 1) + ld(bh, 1), gh_n,
                                 load_acc(h_in_b + j, n), r, z, g, h_new);
      store_acc(h_new, h_b + j, n);
      store_acc(h_new, out_b + j, n);
      if (ws_b) {
        r.store(ws_b + j, n);
        z.store(ws_b + H + j, n);
        g.store(ws_b + 2 * H + j, n);
        gh_n.store(ws_b + 3 * H + j, n);
      }
    });
  });
}

template <class T>
void gru_backward_step(const GruStepBackward& p) {
  using acc_t = at::opmath_type<T>;
  using V = AccVec<T>;
  const int64_t H = p.hidden;
  const T* grad_out = static_cast<const T*>(p.grad_out);
  T* dh = static_cast<T*>(p.dh);
  const T* h_prev = static_cast<const T*>(p.h_prev);
  const acc_t* ws = static_cast<const acc_t*>(p.ws);
  T* dgi = static_cast<T*>(p.dgi);
  T* dgh = static_cast<T*>(p.dgh);
  for_each_row(p.rows, H, [&](int64_t b) {
    const T* go_b = grad_out + b * H;
    const T* hp_b = h_prev + b * H;
    const acc_t* ws_b = ws + b * 4 * H;
    T* dh_b = dh + b * H;
    T* dgi_b = dgi + b * 3 * H;
    T* dgh_b = dgh + b * 3 * H;
    for_each_chunk<T>(H, [&](int64_t j, int64_t n) {
      auto ws_at = [&](int64_t gate) { return V::loadu(ws_b + gate * H + j, n); };
      V d_ar, d_az, d_an, d_ghn, dh_direct;
      gru_backward_point(load_acc(dh_b + j, n) + load_acc(go_b + j, n), load_acc(hp_b + j, n), ws_at(0),
                         ws_at(1), ws_at(2), ws_at(3), d_ar, d_az, d_an, d_ghn, dh_direct);
      store_acc(d_ar, dgi_b + j, n);
      store_acc(d_az, dgi_b + H + j, n);
      store_acc(d_an, dgi_b + 2 * H + j, n);
      store_acc(d_ar, dgh_b + j, n);
      store_acc(d_az, dgh_b + H + j, n);
      store_acc(d_ghn, dgh_b + 2 * H + j, n);
      store_acc(dh_direct, dh_b + j, n);
    });
  });
}

template <class T, bool kRelu>
void rnn_forward_step(const RnnStepForward& p) {
  const int64_t H = p.hidden;
  const T* gi = static_cast<const T*>(p.gi);
  const T* gh = static_cast<const T*>(p.gh);
  const T* bi = static_cast<const T*>(p.b_ih);
  const T* bh = static_cast<const T*>(p.b_hh);
  T* h = static_cast<T*>(p.h);
  T* out = static_cast<T*>(p.out);
  for_each_row(p.rows, H, [&](int64_t b) {
    const int64_t o = b * H;
    for_each_chunk<T>(H, [&](int64_t j, int64_t n) {
      auto ld = [&](const T* base) { return load_acc(base + j, n); };
      const auto h_new = rnn_forward_point<kRelu, VecMath>(ld(gi + o) + ld(bi), ld(gh + o) + ld(bh));
      store_acc(h_new, h + o + j, n);
      store_acc(h_new, out + o + j, n);
    });
  });
}

template <class T, bool kRelu>
void rnn_backward_step(const RnnStepBackward& p) {
  const int64_t H = p.hidden;
  const T* grad_out = static_cast<const T*>(p.grad_out);
  const T* dh = static_cast<const T*>(p.dh);
  const T* h_new = static_cast<const T*>(p.h_new);
  T* da = static_cast<T*>(p.da);
  for_each_row(p.rows, H, [&](int64_t b) {
    const int64_t o = b * H;
    for_each_chunk<T>(H, [&](int64_t j, int64_t n) {
      auto ld = [&](const T* base) { return load_acc(base + o + j, n); };
      store_acc(rnn_backward_point<kRelu, VecMath>(ld(dh) + ld(grad_out), ld(h_new)), da + o + j, n);
    });
  });
}

// dtype -> kernel instantiation; the dispatcher has already rejected other dtypes.
template <template <class> class Kernel, class Step>
void by_dtype(c10::ScalarType dtype, const Step& step) {
  switch (dtype) {
    case c10::ScalarType::Float: return Kernel<float>::run(step);
    case c10::ScalarType::Double: return Kernel<double>::run(step);
    case c10::ScalarType::BFloat16: return Kernel<c10::BFloat16>::run(step);
    default: TORCH_CHECK(false, "fastseq gru/rnn cpu: unsupported dtype ", dtype);
  }
}

template <class T> struct GruForward { static void run(const GruStepForward& s) { gru_forward_step<T>(s); } };
template <class T> struct GruBackward { static void run(const GruStepBackward& s) { gru_backward_step<T>(s); } };
template <class T> struct RnnForward {
  static void run(const RnnStepForward& s) { s.relu ? rnn_forward_step<T, true>(s) : rnn_forward_step<T, false>(s); }
};
template <class T> struct RnnBackward {
  static void run(const RnnStepBackward& s) { s.relu ? rnn_backward_step<T, true>(s) : rnn_backward_step<T, false>(s); }
};

void cpu_gru_forward(c10::ScalarType d, const GruStepForward& s) { by_dtype<GruForward>(d, s); }
void cpu_gru_backward(c10::ScalarType d, const GruStepBackward& s) { by_dtype<GruBackward>(d, s); }
void cpu_rnn_forward(c10::ScalarType d, const RnnStepForward& s) { by_dtype<RnnForward>(d, s); }
void cpu_rnn_backward(c10::ScalarType d, const RnnStepBackward& s) { by_dtype<RnnBackward>(d, s); }

}  // namespace

const PointwiseBackend& cpu_backend() {
  static const PointwiseBackend backend{cpu_gru_forward, cpu_gru_backward, cpu_rnn_forward, cpu_rnn_backward};
  return backend;
}

}  // namespace gru_rnn
}  // namespace fastseq
