// The one activation policy of every CPU recurrent kernel (LSTM, GRU, RNN), on at::vec
// vectors (include after common/cpu_vec.h). float: exp_u20-based (~20 ULP, ~2e-6 relative;
// within float32 noise for gates and ~3x cheaper than Sleef's 1-ULP tanh/exp); double:
// Sleef's 1-ULP functions (gradcheck). exp_u20 clamps its argument (min/max drop NaN), so
// NaN is put back explicitly: a NaN input, state or weight must show in the output as it
// does in torch, never become 0.
#pragma once

#include <limits>

namespace fastseq {

struct VecActivations {
  using VF = at::vec::Vectorized<float>;
  using VD = at::vec::Vectorized<double>;
  static VF keep_nan(const VF& y, const VF& x) { return VF::blendv(y, x, x.isnan()); }
  // 1 / d for d >= 1 (1 + exp(...)): the hardware estimate refined by one Newton step
  // (~1e-7 relative, below exp_u20's error) costs a fraction of a division, which is the
  // slowest instruction of the gate math (5 of them per LSTM unit and step).
  static VF reciprocal(const VF& d) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#if defined(CPU_CAPABILITY_AVX512)
    const VF r0(_mm512_rcp14_ps(d));
#else
    const VF r0(_mm256_rcp_ps(d));
#endif
    // r1 = r0 (2 - d r0); exp_u20 overflows to inf near its clamp, where 1 / d must be 0
    // exactly as a division gives it (sigmoid(-inf) = 0, so that 0 * inf is NaN as in torch),
    // not inf * 0.
    const VF r1 = r0 * at::vec::fnmadd(d, r0, VF(2.0f));
    return VF::blendv(r1, VF(0.0f), d == VF(std::numeric_limits<float>::infinity()));
#else
    return VF(1.0f) / d;
#endif
  }
  static VF sigmoid(const VF& x) {
    return keep_nan(reciprocal(VF(1.0f) + x.neg().exp_u20()), x);
  }
  static VF tanh(const VF& x) {  // 2 sigmoid(2x) - 1, saturating to +-1 for +-inf
    const VF one(1.0f), two(2.0f);
    return keep_nan(two * reciprocal(one + (x * VF(-2.0f)).exp_u20()) - one, x);
  }
  static VD sigmoid(const VD& x) {
    const VD one(1.0);
    return one / (one + x.neg().exp());
  }
  static VD tanh(const VD& x) { return x.tanh(); }
  // relu keeps NaN as torch does (max with 0 would drop it); its derivative is taken from
  // the output, as torch does (y > 0).
  template <class V> static V relu(const V& x) { return V::blendv(at::vec::clamp_min(x, V(0)), x, x.isnan()); }
  template <class V> static V relu_grad_from_output(const V& y) { return V::blendv(V(0), V(1), y > V(0)); }
};

namespace lstm { using fastseq::VecActivations; }

}  // namespace fastseq
