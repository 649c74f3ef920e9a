// The GRU and Elman-RNN pointwise formulas and their derivatives, written once for the CPU
// loops (scalar and at::vec) and the CUDA kernels. M is a math policy (sigmoid, tanh, relu)
// and V a value type (float, double, or a SIMD vector), so every backend runs this code.
#pragma once

#include <cmath>

#include "common/host_device.h"

namespace fastseq {
namespace gru_rnn {

FASTSEQ_HOST_DEVICE float fs_exp(float x) { return ::expf(x); }
FASTSEQ_HOST_DEVICE double fs_exp(double x) { return ::exp(x); }
FASTSEQ_HOST_DEVICE float fs_tanh(float x) { return ::tanhf(x); }
FASTSEQ_HOST_DEVICE double fs_tanh(double x) { return ::tanh(x); }

// Scalar policy (CPU tails, bfloat16 on CPU, every CUDA kernel).
struct ScalarMath {
  template <class T> FASTSEQ_HOST_DEVICE static T sigmoid(T x) { return T(1) / (T(1) + fs_exp(-x)); }
  template <class T> FASTSEQ_HOST_DEVICE static T tanh(T x) { return fs_tanh(x); }
  template <class T> FASTSEQ_HOST_DEVICE static T relu(T x) { return x > T(0) ? x : T(0); }
  // relu'(a) from y = relu(a): torch also takes the mask from the result (y > 0).
  template <class T> FASTSEQ_HOST_DEVICE static T relu_grad_from_output(T y) { return y > T(0) ? T(1) : T(0); }
};

// GRU, torch's gate order (r, z, n). gi_* already hold W_i* x + b_i*, gh_* hold W_h* h + b_h*.
//   r = sigmoid(gi_r + gh_r), z = sigmoid(gi_z + gh_z), n = tanh(gi_n + r * gh_n)
//   h' = (1 - z) * n + z * h, evaluated as torch does: (h - n) * z + n
template <class M, class V>
FASTSEQ_HOST_DEVICE void gru_forward_point(V gi_r, V gi_z, V gi_n, V gh_r, V gh_z, V gh_n, V h,
                                           V& r, V& z, V& n, V& h_new) {
  r = M::sigmoid(gi_r + gh_r);
  z = M::sigmoid(gi_z + gh_z);
  n = M::tanh(gi_n + r * gh_n);
  h_new = (h - n) * z + n;
}

// Backward of gru_forward_point given dL/dh'. Outputs the gradients of the pre-activations
// seen by the input projection (d_ar, d_az, d_an) and by the recurrent projection (the same
// for r and z; d_ghn = d_an * r for n), and the direct part of dL/dh (the rest flows
// through W_hh).
template <class V>
FASTSEQ_HOST_DEVICE void gru_backward_point(V dh_new, V h, V r, V z, V n, V gh_n,
                                            V& d_ar, V& d_az, V& d_an, V& d_ghn, V& dh_direct) {
  const V one(1);
  V dn = dh_new * (one - z);
  V dz = dh_new * (h - n);
  dh_direct = dh_new * z;
  d_an = dn * (one - n * n);
  d_ghn = d_an * r;
  V dr = d_an * gh_n;
  d_ar = dr * r * (one - r);
  d_az = dz * z * (one - z);
}

// Elman RNN: h' = act(gi + gh), act = tanh or relu.
template <bool kRelu, class M, class V>
FASTSEQ_HOST_DEVICE V rnn_forward_point(V gi, V gh) {
  V a = gi + gh;
  if constexpr (kRelu) return M::relu(a);
  else return M::tanh(a);
}

// dL/da from dL/dh' and h' itself (both derivatives are functions of the output).
template <bool kRelu, class M, class V>
FASTSEQ_HOST_DEVICE V rnn_backward_point(V dh_new, V h_new) {
  if constexpr (kRelu) return dh_new * M::relu_grad_from_output(h_new);
  else return dh_new * (V(1) - h_new * h_new);
}

}  // namespace gru_rnn
}  // namespace fastseq
