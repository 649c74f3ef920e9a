// Gate activations on at::vec vectors for the CPU LSTM loops (include after common/cpu_vec.h).
// float: exp_u20-based (~20 ULP, ~2e-6 relative; within float32 noise for gates and ~3x
// cheaper than Sleef's 1-ULP tanh/exp); double: Sleef's 1-ULP functions (gradcheck).
// exp_u20 clamps its argument (min/max drop NaN), so NaN is put back explicitly: a NaN
// input, state or weight must show in the output as it does in torch, never become 0.
#pragma once

namespace fastseq {
namespace lstm {

struct VecActivations {
  using VF = at::vec::Vectorized<float>;
  using VD = at::vec::Vectorized<double>;
  static VF keep_nan(const VF& y, const VF& x) { return VF::blendv(y, x, x.isnan()); }
  static VF sigmoid(const VF& x) {
    const VF one(1.0f);
    return keep_nan(one / (one + x.neg().exp_u20()), x);
  }
  static VF tanh(const VF& x) {  // 2 sigmoid(2x) - 1, saturating to +-1 for +-inf
    const VF one(1.0f), two(2.0f);
    return keep_nan(two / (one + (x * VF(-2.0f)).exp_u20()) - one, x);
  }
  static VD sigmoid(const VD& x) {
    const VD one(1.0);
    return one / (one + x.neg().exp());
  }
  static VD tanh(const VD& x) { return x.tanh(); }
};

}  // namespace lstm
}  // namespace fastseq
