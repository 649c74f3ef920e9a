// The LSTM pointwise math (gate activations, cell update and their derivatives), written
// once for the CPU loops (scalars and at::vec vectors) and the CUDA kernels (floats).
#pragma once

#include <math.h>

#include "common/host_device.h"

namespace fastseq {
namespace lstm {

// Activations on plain scalars; the CPU vector path supplies its own policy with the same
// two static functions, so the formulas below serve every backend.
struct ScalarActivations {
  FASTSEQ_HOST_DEVICE static float sigmoid(float x) { return 1.0f / (1.0f + ::expf(-x)); }
  FASTSEQ_HOST_DEVICE static double sigmoid(double x) { return 1.0 / (1.0 + ::exp(-x)); }
  FASTSEQ_HOST_DEVICE static float tanh(float x) { return ::tanhf(x); }
  FASTSEQ_HOST_DEVICE static double tanh(double x) { return ::tanh(x); }
};

// One LSTM step for one hidden unit, torch's gate order (i, f, g, o). On entry i, f, g, o
// hold the pre-activations (x W_ih^T + h W_hh^T + biases); on exit the activated gates,
// which is what backward needs. c = f * c_prev + i * g, h = o * tanh(c).
template <class Act, class T>
FASTSEQ_HOST_DEVICE void gates_forward(T& i, T& f, T& g, T& o, const T& c_prev, T& c, T& h) {
  i = Act::sigmoid(i);
  f = Act::sigmoid(f);
  g = Act::tanh(g);
  o = Act::sigmoid(o);
  c = f * c_prev + i * g;
  h = o * Act::tanh(c);
}

// Backward of gates_forward. Inputs: activated gates, c (this step), c_prev, dh (gradient
// reaching h = o * tanh(c)), dc (in: gradient reaching c from the next step and from c_n;
// out: gradient for c_prev). Outputs the pre-activation gradients and h_pre = o * tanh(c)
// (recomputed rather than stored, for the projection's weight gradient).
template <class Act, class T>
FASTSEQ_HOST_DEVICE void gates_backward(const T& i, const T& f, const T& g, const T& o, const T& c,
                                        const T& c_prev, const T& dh, T& dc, T& di, T& df, T& dg,
                                        T& d_o, T& h_pre) {
  const T one(1.0f);
  const T tanh_c = Act::tanh(c);
  h_pre = o * tanh_c;
  d_o = dh * tanh_c * o * (one - o);
  const T dc_total = dc + dh * o * (one - tanh_c * tanh_c);
  di = dc_total * g * i * (one - i);
  df = dc_total * c_prev * f * (one - f);
  dg = dc_total * i * (one - g * g);
  dc = dc_total * f;
}

}  // namespace lstm
}  // namespace fastseq
