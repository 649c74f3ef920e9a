// Input checks and device dispatch of fused attention: every contract of attention.h is
// checked here, once, before a CPU or CUDA implementation sees the tensors.
#include "attention/attention.h"

#include "common/checks.h"

#include <cmath>

namespace fastseq {
namespace {

constexpr const char* kOp = "scaled_dot_product_attention";

void check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  check_device_supported(q, kOp, "query");
  check_dim(q, kOp, "query", 4);
  check_dim(k, kOp, "key", 4);
  check_dim(v, kOp, "value", 4);
  check_floating(q, kOp, "query");
  const auto dtype = q.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16 ||
                  dtype == at::kHalf,
              kOp, ": query must be float32, float64, bfloat16 or float16, got ",
              dtype);
  check_same_dtype(k, q, kOp, "key", "query");
  check_same_dtype(v, q, kOp, "value", "query");
  check_same_device(k, q, kOp, "key", "query");
  check_same_device(v, q, kOp, "value", "query");
  const int64_t B = q.size(0), Hq = q.size(1), L = q.size(2), E = q.size(3);
  check_shape(k, kOp, "key", {B, -1, -1, E});
  const int64_t Hk = k.size(1), S = k.size(2);
  check_shape(v, kOp, "value", {B, Hk, S, -1});
  // Zero heads on both sides is an empty problem (torch returns an empty output).
  TORCH_CHECK((Hk > 0 && Hq % Hk == 0) || (Hq == 0 && Hk == 0), kOp, ": query's head count (", Hq,
              ") must be a multiple of key's (", Hk, ")");
  (void)L;
}

void check_mask(const std::optional<at::Tensor>& mask, const at::Tensor& q, const at::Tensor& k) {
  if (!mask) return;
  check_same_device(*mask, q, kOp, "attn_mask", "query");
  TORCH_CHECK(mask->scalar_type() == at::kBool || mask->scalar_type() == q.scalar_type(), kOp,
              ": attn_mask must be bool or have query's dtype (", q.scalar_type(), "), got ",
              mask->scalar_type());
  check_shape(*mask, kOp, "attn_mask", {q.size(0), q.size(1), q.size(2), k.size(2)});
}

void check_scalars(double dropout_p, double scale) {
  TORCH_CHECK(dropout_p >= 0.0 && dropout_p < 1.0, kOp, ": dropout_p must be in [0, 1), got ",
              dropout_p);
  TORCH_CHECK(std::isfinite(scale), kOp, ": scale must be finite, got ", scale);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, std::optional<at::Tensor>> attention_forward(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_mask, double dropout_p, bool is_causal, double scale,
    int64_t seed, bool return_weights) {
  check_qkv(query, key, value);
  check_mask(attn_mask, query, key);
  check_scalars(dropout_p, scale);
#ifdef FASTSEQ_WITH_CUDA
  if (query.is_cuda())
    return attention_forward_cuda(query, key, value, attn_mask, dropout_p, is_causal, scale, seed,
                                  return_weights);
#endif
  return attention_forward_cpu(query, key, value, attn_mask, dropout_p, is_causal, scale, seed,
                               return_weights);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, std::optional<at::Tensor>> attention_backward(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_weights,
    const std::optional<at::Tensor>& weights, const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const at::Tensor& out, const at::Tensor& lse, const std::optional<at::Tensor>& attn_mask,
    double dropout_p, bool is_causal, double scale, int64_t seed, bool mask_grad) {
  check_qkv(query, key, value);
  check_mask(attn_mask, query, key);
  check_scalars(dropout_p, scale);
  const int64_t B = query.size(0), Hq = query.size(1), L = query.size(2), S = key.size(2);
  const int64_t Ev = value.size(3);
  check_shape(out, kOp, "out", {B, Hq, L, Ev});
  check_same_dtype(out, query, kOp, "out", "query");
  check_shape(grad_out, kOp, "grad_out", {B, Hq, L, Ev});
  check_same_dtype(grad_out, query, kOp, "grad_out", "query");
  check_same_device(grad_out, query, kOp, "grad_out", "query");
  check_shape(lse, kOp, "lse", {B, Hq, L});
  TORCH_CHECK(lse.scalar_type() == (query.scalar_type() == at::kDouble ? at::kDouble : at::kFloat),
              kOp, ": lse must be float32 (float64 for float64 inputs), got ", lse.scalar_type());
  if (grad_weights) {
    check_shape(*grad_weights, kOp, "grad_weights", {B, Hq, L, S});
    check_same_dtype(*grad_weights, query, kOp, "grad_weights", "query");
    check_same_device(*grad_weights, query, kOp, "grad_weights", "query");
    TORCH_CHECK(weights.has_value(), kOp, ": grad_weights needs the forward's weights");
    check_shape(*weights, kOp, "weights", {B, Hq, L, S});
    check_same_dtype(*weights, query, kOp, "weights", "query");
  }
  TORCH_CHECK(!mask_grad || (attn_mask && attn_mask->scalar_type() != at::kBool), kOp,
              ": mask_grad needs an additive (floating-point) attn_mask");
#ifdef FASTSEQ_WITH_CUDA
  if (query.is_cuda())
    return attention_backward_cuda(grad_out, grad_weights, weights, query, key, value, out, lse, attn_mask,
                                   dropout_p, is_causal, scale, seed, mask_grad);
#endif
  return attention_backward_cpu(grad_out, grad_weights, weights, query, key, value, out, lse, attn_mask,
                                dropout_p, is_causal, scale, seed, mask_grad);
}

}  // namespace fastseq
