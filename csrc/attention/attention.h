// The C++ surface of fused scaled-dot-product attention: forward (output, row log-sum-exp and
// optionally the softmax weights) and backward, dispatched by device in attention.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include "attention/attention_params.h"

#include <cstdint>
#include <optional>
#include <tuple>

namespace fastseq {

// Shapes (Python flattens batch dims and broadcasts the mask to these, as views):
//   query [B, Hq, L, E], key [B, Hk, S, E], value [B, Hk, S, Ev], Hq a multiple of Hk
//   attn_mask [B, Hq, L, S] with any strides (0 for broadcast dims): bool (true = attend)
//     or additive, in query's dtype
// Returns output [B, Hq, L, Ev] (laid out [B, L, Hq, Ev]), lse [B, Hq, L] (float32, float64
// for float64 inputs; +inf on fully masked rows) and, when return_weights, the softmax
// weights [B, Hq, L, S] (after dropout, scaled by 1/(1-p)), or with average_weights their
// mean over the heads [B, L, S] (no backward takes those: the caller needs no gradient).
// Dropout draws come from a counter-based hash of (seed, row, column), so the backward
// regenerates the forward's mask from the same seed.
std::tuple<at::Tensor, at::Tensor, std::optional<at::Tensor>> attention_forward(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_mask, double dropout_p, bool is_causal, double scale,
    int64_t seed, bool return_weights, bool average_weights = false);

// Gradients of query, key, value and, when mask_grad, of an additive mask as a full
// [B, Hq, L, S] tensor (the caller sums it over the mask's broadcast dims).
// grad_weights is the gradient of the weights output of a return_weights forward, weights
// that output itself (needed only with grad_weights).
std::tuple<at::Tensor, at::Tensor, at::Tensor, std::optional<at::Tensor>> attention_backward(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_weights,
    const std::optional<at::Tensor>& weights, const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const at::Tensor& out, const at::Tensor& lse, const std::optional<at::Tensor>& attn_mask,
    double dropout_p, bool is_causal, double scale, int64_t seed, bool mask_grad);

// Device implementations: the problem as attention_params.h's struct, built once by
// attention.cpp from checked tensors, and the buffers it allocated there.
void attention_forward_cpu(const attn::Params& params, const attn::ForwardOutputs& outputs);
// Whether the CPU forward writes head-averaged weights itself (float32 through brgemm);
// elsewhere attention_forward averages per-head weights after the kernel.
bool attention_cpu_averages_weights(const attn::Params& params);
void attention_backward_cpu(const attn::Params& params, const attn::BackwardBuffers& buffers);

#ifdef FASTSEQ_WITH_CUDA
void attention_forward_cuda(c10::Device device, const attn::Params& params,
                            const attn::ForwardOutputs& outputs);
void attention_backward_cuda(c10::Device device, const attn::Params& params,
                             const attn::BackwardBuffers& buffers);
#endif

}  // namespace fastseq
