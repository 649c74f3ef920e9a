// CUDA host glue of fused attention: tensors -> the kernels' params struct, on the current
// stream under a device guard; the kernels themselves live in attention_kernels.cu.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
// c10/cuda/CUDAStream.h, not ATen/cuda/CUDAContext.h: that one includes the cuBLAS, cuSPARSE and
// cuSOLVER headers, which a toolkit of nvcc and the CUDA runtime alone lacks.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include "attention/attention.h"
#include "attention/attention_kernels.cuh"

namespace fastseq {
namespace {

namespace ac = attention_cuda;

constexpr const char* kOp = "scaled_dot_product_attention";

ac::Dtype kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return ac::Dtype::kFloat32;
    case at::kHalf: return ac::Dtype::kFloat16;
    case at::kBFloat16: return ac::Dtype::kBFloat16;
    default:
      TORCH_CHECK(false, kOp, ": CUDA supports float32, float16 and bfloat16 inputs, got ", t);
  }
  return ac::Dtype::kFloat32;  // unreachable: TORCH_CHECK(false) throws
}

// The kernels read rows with unit stride along the head dim.
at::Tensor unit_last_stride(const at::Tensor& t) { return t.stride(3) == 1 ? t : t.contiguous(); }

ac::ForwardParams make_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const std::optional<at::Tensor>& mask, double dropout_p,
                              bool is_causal, double scale, int64_t seed) {
  TORCH_CHECK(q.size(3) <= ac::kMaxHeadDim && v.size(3) <= ac::kMaxHeadDim, kOp,
              ": CUDA kernels support head dims up to ", ac::kMaxHeadDim, ", got query/key ",
              q.size(3), " and value ", v.size(3));
  ac::ForwardParams p{};
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
  p.group = p.Hq / p.Hk;
  p.q_sb = q.stride(0), p.q_sh = q.stride(1), p.q_sl = q.stride(2);
  p.k_sb = k.stride(0), p.k_sh = k.stride(1), p.k_ss = k.stride(2);
  p.v_sb = v.stride(0), p.v_sh = v.stride(1), p.v_ss = v.stride(2);
  p.mask_kind = ac::MaskKind::kNone;
  if (mask) {
    p.mask = mask->const_data_ptr();
    p.mask_kind = mask->scalar_type() == at::kBool ? ac::MaskKind::kBool : ac::MaskKind::kAdditive;
    p.m_sb = mask->stride(0), p.m_sh = mask->stride(1), p.m_sl = mask->stride(2),
    p.m_ss = mask->stride(3);
  }
  p.scale = static_cast<float>(scale);
  p.causal = is_causal;
  p.dropout_p = static_cast<float>(dropout_p);
  p.keep_scale = dropout_p > 0 ? static_cast<float>(1.0 / (1.0 - dropout_p)) : 1.f;
  p.seed = static_cast<uint64_t>(seed);
  return p;
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, kOp, ": ", what, " kernel launch failed: ",
              cudaGetErrorString(err));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, std::optional<at::Tensor>> attention_forward_cuda(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_mask, double dropout_p, bool is_causal, double scale,
    int64_t seed, bool return_weights) {
  const c10::cuda::CUDAGuard guard(query.device());
  const at::Tensor q = unit_last_stride(query), k = unit_last_stride(key),
                   v = unit_last_stride(value);
  const ac::Dtype dtype = kernel_dtype(q.scalar_type());
  const int64_t B = q.size(0), Hq = q.size(1), L = q.size(2), S = k.size(2), Ev = v.size(3);
  at::Tensor out = at::empty({B, Hq, L, Ev}, q.options());
  at::Tensor lse = at::empty({B, Hq, L}, q.options().dtype(at::kFloat));
  std::optional<at::Tensor> weights;
  if (return_weights) weights = at::empty({B, Hq, L, S}, q.options());
  ac::ForwardParams p = make_params(q, k, v, attn_mask, dropout_p, is_causal, scale, seed);
  p.out = out.mutable_data_ptr();
  p.lse = lse.mutable_data_ptr<float>();
  p.weights = weights ? weights->mutable_data_ptr() : nullptr;
  check_launch(ac::attention_forward(p, dtype, c10::cuda::getCurrentCUDAStream()), "forward");
  return {out, lse, weights};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, std::optional<at::Tensor>> attention_backward_cuda(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_weights,
    const std::optional<at::Tensor>& weights, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const at::Tensor& out, const at::Tensor& lse,
    const std::optional<at::Tensor>& attn_mask, double dropout_p, bool is_causal, double scale,
    int64_t seed, bool mask_grad) {
  const c10::cuda::CUDAGuard guard(query.device());
  const at::Tensor q = unit_last_stride(query), k = unit_last_stride(key),
                   v = unit_last_stride(value);
  const at::Tensor go = grad_out.contiguous(), o = out.contiguous(), l = lse.contiguous();
  const ac::Dtype dtype = kernel_dtype(q.scalar_type());
  const int64_t B = q.size(0), Hq = q.size(1), L = q.size(2), S = k.size(2);
  // Gradients come out contiguous in the shapes of q, k, v.
  at::Tensor dq = at::empty(q.sizes(), q.options());
  at::Tensor dk = at::empty(k.sizes(), k.options());
  at::Tensor dv = at::empty(v.sizes(), v.options());
  at::Tensor d_row = at::empty({B, Hq, L}, q.options().dtype(at::kFloat));
  std::optional<at::Tensor> dmask;
  if (mask_grad) dmask = at::zeros({B, Hq, L, S}, q.options().dtype(at::kFloat));
  std::optional<at::Tensor> w, gw;
  if (grad_weights) {
    w = weights->contiguous();
    gw = grad_weights->contiguous();
  }
  ac::BackwardParams bp{};
  bp.fwd = make_params(q, k, v, attn_mask, dropout_p, is_causal, scale, seed);
  bp.fwd.lse = const_cast<float*>(l.const_data_ptr<float>());  // read only in the backward
  bp.out = o.const_data_ptr();
  bp.grad_out = go.const_data_ptr();
  bp.grad_weights = gw ? gw->const_data_ptr() : nullptr;
  bp.weights_saved = w ? w->const_data_ptr() : nullptr;
  bp.d_row = d_row.mutable_data_ptr<float>();
  bp.dq = dq.mutable_data_ptr();
  bp.dk = dk.mutable_data_ptr();
  bp.dv = dv.mutable_data_ptr();
  bp.dmask = dmask ? dmask->mutable_data_ptr<float>() : nullptr;
  check_launch(ac::attention_backward(bp, dtype, c10::cuda::getCurrentCUDAStream()), "backward");
  if (dmask && dmask->scalar_type() != q.scalar_type()) dmask = dmask->to(q.scalar_type());
  return {dq, dk, dv, dmask};
}

}  // namespace fastseq
