// Input checks, the one attn::Params of a call and device dispatch of fused attention: every
// contract of attention.h is checked here, once, the outputs allocated and the problem
// described (make_params) before a CPU or CUDA implementation sees it.
#include "attention/attention.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

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
  TORCH_CHECK(!(q.is_cuda() && dtype == at::kDouble), kOp,
              ": query is float64 on ", q.device(), "; the CUDA kernels support float32, bfloat16 "
              "and float16 (float64 runs on the CPU)");
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

// Both backends read rows with unit stride along the last dim and a row stride covering a
// row (the BLAS needs the latter); anything else is copied, once, here.
at::Tensor kernel_ready(const at::Tensor& t) {
  const bool ok = t.stride(3) == 1 && (t.size(2) <= 1 || t.stride(2) >= t.size(3));
  return ok ? t : t.contiguous();
}

attn::RowLayout row_layout(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

attn::Dtype params_dtype(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return attn::Dtype::kFloat64;
    case at::kHalf: return attn::Dtype::kFloat16;
    case at::kBFloat16: return attn::Dtype::kBFloat16;
    default: return attn::Dtype::kFloat32;  // check_qkv let only these four through
  }
}

// The one place a call's tensors become the kernels' description (attention_params.h).
attn::Params make_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const std::optional<at::Tensor>& mask, double dropout_p, bool is_causal,
                         double scale, int64_t seed) {
  attn::Params p{};
  p.dtype = params_dtype(q.scalar_type());
  p.q = q.const_data_ptr();
  p.k = k.const_data_ptr();
  p.v = v.const_data_ptr();
  p.B = q.size(0);
  p.Hq = q.size(1);
  p.Hk = k.size(1);
  p.L = q.size(2);
  p.S = k.size(2);
  p.E = q.size(3);
  p.Ev = v.size(3);
  p.group = p.Hk > 0 ? p.Hq / p.Hk : 1;
  p.q_sb = q.stride(0), p.q_sh = q.stride(1), p.q_sl = q.stride(2);
  p.k_sb = k.stride(0), p.k_sh = k.stride(1), p.k_ss = k.stride(2);
  p.v_sb = v.stride(0), p.v_sh = v.stride(1), p.v_ss = v.stride(2);
  p.mask_kind = attn::MaskKind::kNone;
  p.mask = nullptr;
  if (mask) {
    p.mask_kind = mask->scalar_type() == at::kBool ? attn::MaskKind::kBool : attn::MaskKind::kAdditive;
    p.mask = mask->const_data_ptr();
    p.m_sb = mask->stride(0), p.m_sh = mask->stride(1), p.m_sl = mask->stride(2),
    p.m_ss = mask->stride(3);
  }
  p.scale = scale;
  p.causal = is_causal;
  p.dropout_p = static_cast<float>(dropout_p);
  p.keep_scale = dropout_p > 0 ? 1.0 / (1.0 - dropout_p) : 1.0;
  p.seed = static_cast<uint64_t>(seed);
  return p;
}

void* data_or_null(const std::optional<at::Tensor>& t) { return t ? t->data_ptr() : nullptr; }

}  // namespace

std::tuple<at::Tensor, at::Tensor, std::optional<at::Tensor>> attention_forward(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_mask, double dropout_p, bool is_causal, double scale,
    int64_t seed, bool return_weights, bool average_weights) {
  check_qkv(query, key, value);
  TORCH_CHECK(return_weights || !average_weights, kOp, ": average_weights needs return_weights");
  check_mask(attn_mask, query, key);
  check_scalars(dropout_p, scale);
  const at::Tensor q = kernel_ready(query), k = kernel_ready(key), v = kernel_ready(value);
  const int64_t B = q.size(0), Hq = q.size(1), L = q.size(2), S = k.size(2), Ev = v.size(3);
  // Laid out [B, L, Hq, Ev] as torch's CPU flash attention lays its output: the heads'
  // rows of one position together, so merging the heads back is a view.
  at::Tensor out = at::empty({B, L, Hq, Ev}, q.options()).transpose(1, 2);
  at::Tensor lse = at::empty({B, Hq, L}, q.options().dtype(acc_dtype(q.scalar_type())));
  attn::Params params = make_params(q, k, v, attn_mask, dropout_p, is_causal, scale, seed);
  params.out_rows = row_layout(out);
  // Head-averaged weights straight from the kernel where it can; else per-head, then the mean.
  const bool kernel_averages = average_weights && !q.is_cuda() && attention_cpu_averages_weights(params);
  std::optional<at::Tensor> weights;
  if (kernel_averages) {
    weights = at::empty({B, L, S}, q.options());
  } else if (return_weights) {
    weights = at::empty({B, Hq, L, S}, q.options());
  }
  if (B * Hq * L > 0) {  // else no query row: nothing to compute
    const attn::ForwardOutputs outputs{out.data_ptr(), lse.data_ptr(), data_or_null(weights),
                                       kernel_averages};
#ifdef FASTSEQ_WITH_CUDA
    if (q.is_cuda())
      attention_forward_cuda(q.device(), params, outputs);
    else
#endif
      attention_forward_cpu(params, outputs);
  }
  if (average_weights && !kernel_averages) weights = weights->mean(1);
  return {out, lse, weights};
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
  TORCH_CHECK(lse.scalar_type() == acc_dtype(query.scalar_type()),
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
  const at::Tensor q = kernel_ready(query), k = kernel_ready(key), v = kernel_ready(value);
  // grad_out and out are read in place where their rows are (the forward's [B, L, Hq, Ev]
  // layout, and the gradient of a head merge, are), copied otherwise.
  const at::Tensor go = kernel_ready(grad_out), o = kernel_ready(out), l = lse.contiguous();
  // Gradients come out contiguous in the shapes of q, k, v.
  at::Tensor dq = at::empty(q.sizes(), q.options());
  at::Tensor dk = at::empty(k.sizes(), k.options());
  at::Tensor dv = at::empty(v.sizes(), v.options());
  std::optional<at::Tensor> dmask, w, gw;
  if (mask_grad) dmask = at::zeros({B, Hq, L, S}, q.options().dtype(acc_dtype(q.scalar_type())));
  if (grad_weights) {
    w = weights->contiguous();
    gw = grad_weights->contiguous();
  }
  if (dq.numel() + dk.numel() + dv.numel() > 0) {
    attn::Params params = make_params(q, k, v, attn_mask, dropout_p, is_causal, scale, seed);
    params.out_rows = row_layout(o);
    params.grad_out_rows = row_layout(go);
    const attn::BackwardBuffers buffers{go.const_data_ptr(), o.const_data_ptr(), l.const_data_ptr(),
                                        w ? w->const_data_ptr() : nullptr,
                                        gw ? gw->const_data_ptr() : nullptr, dq.data_ptr(),
                                        dk.data_ptr(), dv.data_ptr(), data_or_null(dmask)};
#ifdef FASTSEQ_WITH_CUDA
    if (q.is_cuda())
      attention_backward_cuda(q.device(), params, buffers);
    else
#endif
      attention_backward_cpu(params, buffers);
  }
  if (dmask && dmask->scalar_type() != q.scalar_type()) dmask = dmask->to(q.scalar_type());
  return {dq, dk, dv, dmask};
}

}  // namespace fastseq
