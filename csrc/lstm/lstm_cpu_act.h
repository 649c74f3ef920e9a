// Gate activations on at::vec vectors for the CPU LSTM loops (include after common/cpu_vec.h).
// float: exp_u20-based (~20 ULP, ~2e-6 relative; within float32 noise for gates and ~3x
// cheaper than Sleef's 1-ULP tanh/exp); double: Sleef's 1-ULP functions (gradcheck).
#pragma once

namespace fastseq {
namespace lstm {

struct VecActivations {
  using VF = at::vec::Vectorized<float>;
  using VD = at::vec::Vectorized<double>;
  static VF sigmoid(const VF& x) {
    const VF one(1.0f);
    return one / (one + x.neg().exp_u20());
  }
  static VF tanh(const VF& x) {  // 2 sigmoid(2x) - 1, saturating to +-1 without NaNs
    const VF one(1.0f), two(2.0f);
    return two / (one + (x * VF(-2.0f)).exp_u20()) - one;
  }
  static VD sigmoid(const VD& x) {
    const VD one(1.0);
    return one / (one + x.neg().exp());
  }
  static VD tanh(const VD& x) { return x.tanh(); }
};

}  // namespace lstm
}  // namespace fastseq
