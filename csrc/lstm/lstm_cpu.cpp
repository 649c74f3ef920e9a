// CPU pointwise passes of the LSTM: the formulas of lstm_math.h on at::vec vectors
// (float / double; bfloat16 goes through scalar float math), rows split over threads.
#include "common/cpu_vec.h"  // first: picks the at::vec ISA

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <type_traits>

#include "lstm/lstm_layer.h"
#include "common/cpu_activations.h"
#include "lstm/lstm_math.h"

namespace fastseq {
namespace lstm {
namespace {

using at::vec::Vectorized;


// Threads pay off only when a step has enough elements; below this they cost more than
// they save (a parallel region is a few microseconds).
constexpr int64_t kElementsPerTask = 16384;

inline int64_t row_grain(int64_t hidden) {
  return std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(1, hidden));
}

template <class scalar_t>
void forward_rows(const ForwardStep& s, int64_t begin, int64_t end) {
  const int64_t H = s.hidden;
  for (int64_t r = begin; r < end; ++r) {
    scalar_t* gi = static_cast<scalar_t*>(s.gates) + r * 4 * H;
    scalar_t* gf = gi + H;
    scalar_t* gg = gi + 2 * H;
    scalar_t* go = gi + 3 * H;
    const scalar_t* ga = s.gates_add ? static_cast<const scalar_t*>(s.gates_add) + r * 4 * H : nullptr;
    const scalar_t* cp = static_cast<const scalar_t*>(s.c_prev) + r * H;
    scalar_t* cn = static_cast<scalar_t*>(s.c_next) + r * H;
    scalar_t* cs = s.c_saved ? static_cast<scalar_t*>(s.c_saved) + r * H : nullptr;
    scalar_t* h = static_cast<scalar_t*>(s.h_out) + r * H;
    scalar_t* h2 = s.h_out2 ? static_cast<scalar_t*>(s.h_out2) + r * H : nullptr;
    if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
      using V = Vectorized<scalar_t>;
      for (int64_t j = 0; j < H; j += V::size()) {
        const int n = static_cast<int>(std::min<int64_t>(V::size(), H - j));
        V i = V::loadu(gi + j, n), f = V::loadu(gf + j, n), g = V::loadu(gg + j, n),
          o = V::loadu(go + j, n), c_prev = V::loadu(cp + j, n), c, hv;
        if (ga) {
          i = i + V::loadu(ga + j, n);
          f = f + V::loadu(ga + H + j, n);
          g = g + V::loadu(ga + 2 * H + j, n);
          o = o + V::loadu(ga + 3 * H + j, n);
        }
        gates_forward<VecActivations>(i, f, g, o, c_prev, c, hv);
        i.store(gi + j, n); f.store(gf + j, n); g.store(gg + j, n); o.store(go + j, n);
        c.store(cn + j, n);
        if (cs) c.store(cs + j, n);
        hv.store(h + j, n);
        if (h2) hv.store(h2 + j, n);
      }
    } else {  // reduced precision: float math, one element at a time
      for (int64_t j = 0; j < H; ++j) {
        float i = gi[j], f = gf[j], g = gg[j], o = go[j], c, hv;
        if (ga) {
          i += static_cast<float>(ga[j]);
          f += static_cast<float>(ga[H + j]);
          g += static_cast<float>(ga[2 * H + j]);
          o += static_cast<float>(ga[3 * H + j]);
        }
        gates_forward<ScalarActivations>(i, f, g, o, static_cast<float>(cp[j]), c, hv);
        gi[j] = i; gf[j] = f; gg[j] = g; go[j] = o;
        cn[j] = c;
        if (cs) cs[j] = c;
        h[j] = hv;
        if (h2) h2[j] = hv;
      }
    }
  }
}

template <class scalar_t>
void backward_rows(const BackwardStep& s, int64_t begin, int64_t end) {
  const int64_t H = s.hidden;
  for (int64_t r = begin; r < end; ++r) {
    const scalar_t* gi = static_cast<const scalar_t*>(s.gates) + r * 4 * H;
    const scalar_t* c = static_cast<const scalar_t*>(s.c) + r * H;
    const scalar_t* cp = static_cast<const scalar_t*>(s.c_prev) + r * H;
    const scalar_t* dh = static_cast<const scalar_t*>(s.dh) + r * H;
    const scalar_t* dh2 = s.dh2 ? static_cast<const scalar_t*>(s.dh2) + r * H : nullptr;
    scalar_t* dc = static_cast<scalar_t*>(s.dc) + r * H;
    scalar_t* dgi = static_cast<scalar_t*>(s.dgates) + r * 4 * H;
    scalar_t* hp = s.h_pre ? static_cast<scalar_t*>(s.h_pre) + r * H : nullptr;
    if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
      using V = Vectorized<scalar_t>;
      for (int64_t j = 0; j < H; j += V::size()) {
        const int n = static_cast<int>(std::min<int64_t>(V::size(), H - j));
        V dhv = V::loadu(dh + j, n);
        if (dh2) dhv = dhv + V::loadu(dh2 + j, n);
        V dcv = V::loadu(dc + j, n), di, df, dg, d_o, h_pre;
        gates_backward<VecActivations>(V::loadu(gi + j, n), V::loadu(gi + H + j, n),
                                       V::loadu(gi + 2 * H + j, n), V::loadu(gi + 3 * H + j, n),
                                       V::loadu(c + j, n), V::loadu(cp + j, n), dhv, dcv, di, df,
                                       dg, d_o, h_pre);
        dcv.store(dc + j, n);
        di.store(dgi + j, n); df.store(dgi + H + j, n); dg.store(dgi + 2 * H + j, n);
        d_o.store(dgi + 3 * H + j, n);
        if (hp) h_pre.store(hp + j, n);
      }
    } else {
      for (int64_t j = 0; j < H; ++j) {
        float dhv = static_cast<float>(dh[j]) + (dh2 ? static_cast<float>(dh2[j]) : 0.0f);
        float dcv = dc[j], di, df, dg, d_o, h_pre;
        gates_backward<ScalarActivations>(static_cast<float>(gi[j]), static_cast<float>(gi[H + j]),
                                          static_cast<float>(gi[2 * H + j]),
                                          static_cast<float>(gi[3 * H + j]),
                                          static_cast<float>(c[j]), static_cast<float>(cp[j]),
                                          dhv, dcv, di, df, dg, d_o, h_pre);
        dc[j] = dcv;
        dgi[j] = di; dgi[H + j] = df; dgi[2 * H + j] = dg; dgi[3 * H + j] = d_o;
        if (hp) hp[j] = h_pre;
      }
    }
  }
}

}  // namespace

void forward_step_cpu(const ForwardStep& step, c10::ScalarType dtype) {
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, dtype, "lstm_forward_step_cpu", [&] {
    at::parallel_for(0, step.rows, row_grain(step.hidden), [&](int64_t begin, int64_t end) {
      forward_rows<scalar_t>(step, begin, end);
    });
  });
}

void backward_step_cpu(const BackwardStep& step, c10::ScalarType dtype) {
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, dtype, "lstm_backward_step_cpu", [&] {
    at::parallel_for(0, step.rows, row_grain(step.hidden), [&](int64_t begin, int64_t end) {
      backward_rows<scalar_t>(step, begin, end);
    });
  });
}

}  // namespace lstm
}  // namespace fastseq
