// CPU float32 fast path of the recurrent step: W_hh packed once per sequence into
// register-blocked panels, then per step one pass that does the h W_hh^T GEMM and the gate
// pointwise math in registers (forward), or the dG W_hh GEMM (backward); no per-step
// framework calls, which dominate at LSTM step sizes.
#pragma once

#include <ATen/core/Tensor.h>

#include "lstm/lstm_params.h"

namespace fastseq {
namespace lstm {

// True when the fused CPU path covers this dtype/device (CPU float32).
bool cpu_fused_supported(const at::Tensor& input);

// W_hh [4H, P] packed for the forward step: for each block of V units, for each k, the V
// weights of gate i, f, g, o (4 vectors side by side).
at::Tensor pack_forward_weight(const at::Tensor& w_hh);
// W_hh [4H, P] packed for dh = dG W_hh: for each panel of 4V columns of P, for each k < 4H,
// the 4V weights.
at::Tensor pack_backward_weight(const at::Tensor& w_hh);

// gates (in: input projection incl. biases, out: activated gates) += h_prev W_hh^T, then the
// gate math: like forward_step_cpu, but step.gates_add is ignored and h_prev [rows, P] feeds
// the GEMM.
void fused_forward_step(const ForwardStep& step, const float* h_prev, int64_t P,
                        const at::Tensor& packed);

// dh [rows, P] = dgates [rows, 4H] W_hh.
void packed_backward_gemm(const float* dgates, int64_t rows, int64_t H, float* dh, int64_t P,
                          const at::Tensor& packed);

}  // namespace lstm
}  // namespace fastseq
