// The online-softmax and dropout formulas of fused attention, as FASTSEQ_HOST_DEVICE inline
// functions: the CPU loops and the CUDA kernels call these very functions.
#pragma once

#include <stdint.h>

#include <cmath>

#include "common/host_device.h"

namespace fastseq {
namespace attention_math {

// exp(x) accurate to a few float ulps, written as plain arithmetic so a CPU loop over it
// auto-vectorises (libm's expf does not); on a GPU the hardware exp2 does the same job.
// Inputs below ~-87.3 (masked scores: -inf) give exactly 0, so a masked key never leaks.
FASTSEQ_HOST_DEVICE float fast_exp(float x) {
#if defined(__CUDA_ARCH__)
  return exp2f(x * 1.4426950408889634f);
#else
  const float t = x * 1.4426950408889634f;  // x / ln 2
  const float tc = t < -126.f ? -126.f : (t > 127.f ? 127.f : t);
  // Round to nearest by the 1.5 * 2^23 trick: branch-free, vectorises.
  const float n = (tc + 12582912.f) - 12582912.f;
  const float f = tc - n;  // in [-0.5, 0.5]
  // 2^f by its minimax polynomial on [-0.5, 0.5] (relative error ~2e-7).
  float p = 1.5353362e-4f;
  p = p * f + 1.3398874e-3f;
  p = p * f + 9.6182299e-3f;
  p = p * f + 5.5503324e-2f;
  p = p * f + 2.4022648e-1f;
  p = p * f + 6.9314718e-1f;
  p = p * f + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  const float scale = __builtin_bit_cast(float, bits);
  return t < -126.f ? 0.f : p * scale;
#endif
}

// float64 stays exact: gradcheck runs through this path.
FASTSEQ_HOST_DEVICE double fast_exp(double x) { return ::exp(x); }

FASTSEQ_HOST_DEVICE float acc_log(float x) { return logf(x); }
FASTSEQ_HOST_DEVICE double acc_log(double x) { return ::log(x); }

FASTSEQ_HOST_DEVICE float neg_inf(float) { return -INFINITY; }
FASTSEQ_HOST_DEVICE double neg_inf(double) { return -static_cast<double>(INFINITY); }

// Online-softmax step for one query row: with running maximum m_old and a new tile whose
// maximum is tile_max, returns the new maximum and the factor the running sum and output
// accumulator must be multiplied by. A row that has seen only masked keys keeps m = -inf
// and a factor of 1 (its accumulators are still zero), instead of exp(-inf - -inf) = NaN.
template <typename acc_t>
struct OnlineStep {
  acc_t m_new;
  acc_t rescale;
};

template <typename acc_t>
FASTSEQ_HOST_DEVICE OnlineStep<acc_t> online_softmax_step(acc_t m_old, acc_t tile_max) {
  OnlineStep<acc_t> step;
  step.m_new = m_old > tile_max ? m_old : tile_max;
  step.rescale = (m_old == step.m_new) ? acc_t(1) : fast_exp(m_old - step.m_new);
  return step;
}

// The shift exp() is taken against: a row with only masked keys so far uses 0, so that its
// (all -inf) scores give exp(-inf) = 0 rather than NaN.
template <typename acc_t>
FASTSEQ_HOST_DEVICE acc_t softmax_shift(acc_t m) {
  return m == neg_inf(m) ? acc_t(0) : m;
}

// Log-sum-exp saved for the backward pass. A fully masked row (sum 0) gets +inf, so that the
// backward's exp(score - lse) is 0 for every key: output 0 and zero gradients, as torch's
// CPU scaled_dot_product_attention gives for such rows.
// A NaN sum (a NaN score in the row) stays NaN in both, so it reaches the output and the
// gradients as in torch, instead of reading as a fully masked row.
template <typename acc_t>
FASTSEQ_HOST_DEVICE acc_t row_logsumexp(acc_t m, acc_t sum) {
  if (sum != sum) return sum;
  return sum > acc_t(0) ? m + acc_log(sum) : -neg_inf(m);
}

template <typename acc_t>
FASTSEQ_HOST_DEVICE acc_t inverse_row_sum(acc_t sum) {
  if (sum != sum) return sum;
  return sum > acc_t(0) ? acc_t(1) / sum : acc_t(0);
}

// Softmax probability recomputed in the backward from the saved log-sum-exp.
template <typename acc_t>
FASTSEQ_HOST_DEVICE acc_t prob_from_lse(acc_t score, acc_t lse) {
  return fast_exp(score - lse);
}

// dL/dscore for softmax: P * (dP - D), with D = rowsum(dO * O) (+ rowsum(W * dW) when the
// weights themselves receive a gradient): flash-attention-2's form.
template <typename acc_t>
FASTSEQ_HOST_DEVICE acc_t softmax_grad(acc_t p, acc_t dp, acc_t d) {
  return p * (dp - d);
}

// ---- dropout: a counter-based hash, so the backward regenerates the forward's mask ----

FASTSEQ_HOST_DEVICE uint32_t mix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return h;
}

// Uniform in [0, 1) for element (row, col) of one call; row = (batch * heads + head) * L + i.
FASTSEQ_HOST_DEVICE float dropout_uniform(uint64_t seed, uint32_t row, uint32_t col) {
  uint32_t h = mix32(row * 0x9E3779B1u ^ static_cast<uint32_t>(seed));
  h = mix32(h ^ (col * 0x27D4EB2Fu + static_cast<uint32_t>(seed >> 32)));
  return static_cast<float>(h >> 8) * (1.0f / 16777216.0f);
}

// Multiplier of a probability under dropout: 0 (dropped) or 1 / (1 - p) (kept).
template <typename acc_t>
FASTSEQ_HOST_DEVICE acc_t dropout_factor(uint64_t seed, uint32_t row, uint32_t col, float p,
                                         acc_t keep_scale) {
  return dropout_uniform(seed, row, col) >= p ? keep_scale : acc_t(0);
}

}  // namespace attention_math
}  // namespace fastseq
