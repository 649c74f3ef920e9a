// See gemm.h: oneDNN GEMM through torch's dispatcher for CPU float32, ATen otherwise.
#include "common/gemm.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/mm.h>
#include <c10/core/Scalar.h>
#include <c10/util/string_view.h>

#include <atomic>

namespace fastseq {
namespace {

using LinearPointwiseFn = at::Tensor(const at::Tensor&, const at::Tensor&,
                                     const std::optional<at::Tensor>&, c10::string_view,
                                     c10::List<std::optional<at::Scalar>>,
                                     std::optional<c10::string_view>);

// Looked up once: torch builds without oneDNN simply lack the op.
const c10::TypedOperatorHandle<LinearPointwiseFn>* onednn_linear() {
  static const std::optional<c10::TypedOperatorHandle<LinearPointwiseFn>> handle =
      []() -> std::optional<c10::TypedOperatorHandle<LinearPointwiseFn>> {
    auto op = c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""});
    if (!op) return std::nullopt;
    try {
      return op->typed<LinearPointwiseFn>();
    } catch (const c10::Error&) {  // a schema change in a future torch: use ATen instead
      return std::nullopt;
    }
  }();
  return handle ? &*handle : nullptr;
}

// Below this many multiply-adds oneDNN's per-call cost (~10 us) outweighs its faster kernel.
constexpr int64_t kOnednnMinMacs = int64_t(1) << 20;

bool cpu_is_amd() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_is("amd");
#else
  return false;
#endif
}

enum class Backend : int { kAuto, kOneDnn, kAten };
std::atomic<Backend> backend_setting{Backend::kAuto};

bool use_onednn() {
  const Backend b = backend_setting.load(std::memory_order_relaxed);
  if (b == Backend::kAten) return false;
  static const bool amd = cpu_is_amd();
  return onednn_linear() != nullptr && (b == Backend::kOneDnn || amd);
}

}  // namespace

bool onednn_gemm_available() { return onednn_linear() != nullptr; }

void set_cpu_gemm_backend(const std::string& name) {
  if (name == "auto") backend_setting = Backend::kAuto;
  else if (name == "aten") backend_setting = Backend::kAten;
  else if (name == "onednn") {
    TORCH_CHECK(onednn_linear() != nullptr, "set_cpu_gemm_backend: this torch has no oneDNN "
                "(mkldnn::_linear_pointwise); use \"aten\" or \"auto\"");
    backend_setting = Backend::kOneDnn;
  } else {
    TORCH_CHECK(false, "set_cpu_gemm_backend: name must be \"auto\", \"onednn\" or \"aten\", got \"",
                name, "\"");
  }
}

std::string cpu_gemm_backend() { return use_onednn() ? "onednn" : "aten"; }

// The kernels write GEMM results through raw pointers of their input dtype, so a product
// must come back in that dtype and shape: under torch.autocast the dispatcher would retype
// mm/addmm to bfloat16 or float16 (heap corruption once a float kernel writes into it).
// Autocast is excluded here, and the result checked, whatever reaches the dispatcher.
static at::Tensor checked_product(at::Tensor out, const at::Tensor& x, int64_t M, int64_t N) {
  TORCH_CHECK(out.scalar_type() == x.scalar_type() && out.dim() == 2 && out.size(0) == M &&
                  out.size(1) == N,
              "fastseq internal GEMM: expected a [", M, ", ", N, "] ", x.scalar_type(),
              " result, got ", out.sizes(), " ", out.scalar_type());
  return out;
}

at::Tensor linear_nt(const at::Tensor& x, const at::Tensor& w,
                     const std::optional<at::Tensor>& bias) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  TORCH_CHECK(w.size(1) == K && w.scalar_type() == x.scalar_type() &&
                  (!bias || bias->scalar_type() == x.scalar_type()),
              "fastseq internal GEMM: operands [", M, ", ", K, "] ", x.scalar_type(), " and [",
              N, ", ", w.size(1), "] ", w.scalar_type(), " do not match");
  if (x.is_cpu() && x.scalar_type() == at::kFloat && M > 0 && N > 0 && K > 0 &&
      M * N * K >= kOnednnMinMacs) {
    if (const auto* op = use_onednn() ? onednn_linear() : nullptr) {
      return checked_product(
          op->call(x, w, bias, "none", c10::List<std::optional<at::Scalar>>(), std::nullopt), x,
          M, N);
    }
  }
  return checked_product(bias ? at::addmm(*bias, x, w.t()) : at::mm(x, w.t()), x, M, N);
}

at::Tensor matmul_tn(const at::Tensor& a, const at::Tensor& b) {
  // The swap costs a transposing copy of the [M, N] result: worth it only when the sum runs
  // over many rows (K), as in weight gradients over T*B, not for a single cell step.
  const int64_t K = a.size(0);
  if (K >= 256 && a.size(1) >= b.size(1)) return linear_nt(b.t(), a.t()).t().contiguous();
  return linear_nt(a.t(), b.t());
}

}  // namespace fastseq
