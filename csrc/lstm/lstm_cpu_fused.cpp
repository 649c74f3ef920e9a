// See lstm_cpu_fused.h. The micro-kernel keeps R x 4 accumulator vectors in registers and
// streams one packed k-slice of 4 vectors per iteration (R broadcasts, 4R FMAs).
#include "common/cpu_vec.h"  // first: picks the at::vec ISA

#include <ATen/Parallel.h>
#include <c10/macros/Macros.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>

#include "lstm/lstm_cpu_fused.h"
#include "common/cpu_activations.h"
#include "lstm/lstm_math.h"

namespace fastseq {
namespace lstm {
namespace {

using V = at::vec::Vectorized<float>;
constexpr int64_t W = V::size();
constexpr int kMaxRows = 6;  // 6 x 4 accumulators + 4 weights + 1 broadcast fit 32 zmm


// Keeps a loaded weight vector in a register: otherwise the compiler folds the load into
// every row's FMA, doubling the load traffic of the inner loop.
C10_ALWAYS_INLINE void pin_in_register(V& v) {
#if defined(__GNUC__) && defined(CPU_CAPABILITY_AVX512)
  __m512 raw = v;
  asm("" : "+v"(raw));
  v = V(raw);
#elif defined(__GNUC__) && defined(CPU_CAPABILITY_AVX2)
  __m256 raw = v;
  asm("" : "+x"(raw));
  v = V(raw);
#else
  (void)v;
#endif
}

template <int R>
C10_ALWAYS_INLINE void accumulate(const float* a, int64_t lda, const float* panel, int64_t K, V (&acc)[R][4]) {
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < 4; ++q) acc[r][q] = V(0.0f);
  for (int64_t k = 0; k < K; ++k) {
    const float* p = panel + k * 4 * W;
    V b0 = V::loadu(p), b1 = V::loadu(p + W), b2 = V::loadu(p + 2 * W), b3 = V::loadu(p + 3 * W);
    pin_in_register(b0), pin_in_register(b1), pin_in_register(b2), pin_in_register(b3);
    for (int r = 0; r < R; ++r) {
      const V x(a[r * lda + k]);
      acc[r][0] = at::vec::fmadd(x, b0, acc[r][0]);
      acc[r][1] = at::vec::fmadd(x, b1, acc[r][1]);
      acc[r][2] = at::vec::fmadd(x, b2, acc[r][2]);
      acc[r][3] = at::vec::fmadd(x, b3, acc[r][3]);
    }
  }
}

template <int R>
void forward_block(const ForwardStep& s, const float* h_prev, int64_t P, const float* panel,
                   int64_t r0, int64_t u0) {
  const int64_t H = s.hidden;
  const int n = static_cast<int>(std::min<int64_t>(W, H - u0));
  V acc[R][4];
  accumulate<R>(h_prev + r0 * P, P, panel, P, acc);
  for (int r = 0; r < R; ++r) {
    const int64_t row = r0 + r;
    float* g = static_cast<float*>(s.gates) + row * 4 * H + u0;
    V i = acc[r][0] + V::loadu(g, n), f = acc[r][1] + V::loadu(g + H, n),
      gg = acc[r][2] + V::loadu(g + 2 * H, n), o = acc[r][3] + V::loadu(g + 3 * H, n), c, h;
    const V c_prev = V::loadu(static_cast<const float*>(s.c_prev) + row * H + u0, n);
    gates_forward<VecActivations>(i, f, gg, o, c_prev, c, h);
    i.store(g, n); f.store(g + H, n); gg.store(g + 2 * H, n); o.store(g + 3 * H, n);
    c.store(static_cast<float*>(s.c_next) + row * H + u0, n);
    if (s.c_saved) c.store(static_cast<float*>(s.c_saved) + row * H + u0, n);
    h.store(static_cast<float*>(s.h_out) + row * H + u0, n);
    if (s.h_out2) h.store(static_cast<float*>(s.h_out2) + row * H + u0, n);
  }
}

template <int R>
void backward_block(const float* dgates, int64_t H, float* dh, int64_t P, const float* panel,
                    int64_t r0, int64_t p0) {
  V acc[R][4];
  accumulate<R>(dgates + r0 * 4 * H, 4 * H, panel, 4 * H, acc);
  for (int r = 0; r < R; ++r) {
    float* out = dh + (r0 + r) * P + p0;
    for (int q = 0; q < 4; ++q) {
      const int64_t col = p0 + q * W;
      if (col >= P) break;
      acc[r][q].store(out + q * W, static_cast<int>(std::min<int64_t>(W, P - col)));
    }
  }
}

// Runs fn(r0, R, block) over row blocks of <= kMaxRows and `blocks` column blocks. Threads
// split the (column block, row block) pairs in column-major order, so each mostly keeps its
// own weight panels; splitting rows too keeps both threads busy when the panels are fewer
// than the threads (e.g. dh = dG W_hh with P = 64: a single panel).
template <class Fn>
void for_blocks(int64_t rows, int64_t blocks, int64_t macs_per_block_row, Fn fn) {
  if (rows <= 0) return;
  // Balanced row blocks (8 rows -> 4 + 4, not 6 + 2): every block then reuses each loaded
  // weight vector about equally often.
  const int64_t per = (rows + (rows + kMaxRows - 1) / kMaxRows - 1) / ((rows + kMaxRows - 1) / kMaxRows);
  const int64_t nrb = (rows + per - 1) / per;
  // At least ~64K multiply-adds per task chunk: a parallel region costs a few microseconds.
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, macs_per_block_row * per));
  at::parallel_for(0, blocks * nrb, grain, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / nrb, r0 = (t % nrb) * per;
      fn(r0, std::min<int64_t>(per, rows - r0), b);
    }
  });
}

#define FASTSEQ_ROWS_SWITCH(R, CALL)            \
  switch (R) {                                   \
    case 1: { constexpr int kR = 1; CALL; break; } \
    case 2: { constexpr int kR = 2; CALL; break; } \
    case 3: { constexpr int kR = 3; CALL; break; } \
    case 4: { constexpr int kR = 4; CALL; break; } \
    case 5: { constexpr int kR = 5; CALL; break; } \
    default: { constexpr int kR = 6; CALL; break; } \
  }

}  // namespace

bool cpu_fused_supported(const at::Tensor& input) {
  return input.is_cpu() && input.scalar_type() == at::kFloat;
}

at::Tensor pack_forward_weight(const at::Tensor& w_hh) {
  const int64_t G = w_hh.size(0), P = w_hh.size(1), H = G / 4, nub = (H + W - 1) / W;
  // Zeros only where a last, partial block of units has padding lanes to fill.
  at::Tensor packed = H % W ? at::zeros({nub, P, 4 * W}, w_hh.options())
                            : at::empty({nub, P, 4 * W}, w_hh.options());
  at::Tensor w = w_hh.contiguous();
  const float* src = w.data_ptr<float>();
  float* dst = packed.data_ptr<float>();
  for (int64_t ub = 0; ub < nub; ++ub)
    for (int64_t q = 0; q < 4; ++q)
      for (int64_t u = 0; u < W && ub * W + u < H; ++u) {
        const float* row = src + (q * H + ub * W + u) * P;
        float* d = dst + ub * P * 4 * W + q * W + u;
        for (int64_t k = 0; k < P; ++k) d[k * 4 * W] = row[k];
      }
  return packed;
}

at::Tensor pack_backward_weight(const at::Tensor& w_hh) {
  const int64_t G = w_hh.size(0), P = w_hh.size(1), npb = (P + 4 * W - 1) / (4 * W);
  at::Tensor packed = P % (4 * W) ? at::zeros({npb, G, 4 * W}, w_hh.options())
                                  : at::empty({npb, G, 4 * W}, w_hh.options());
  at::Tensor w = w_hh.contiguous();
  const float* src = w.data_ptr<float>();
  float* dst = packed.data_ptr<float>();
  for (int64_t pb = 0; pb < npb; ++pb)
    for (int64_t k = 0; k < G; ++k) {
      const int64_t c0 = pb * 4 * W, n = std::min<int64_t>(4 * W, P - c0);
      std::copy(src + k * P + c0, src + k * P + c0 + n, dst + (pb * G + k) * 4 * W);
    }
  return packed;
}

void fused_forward_step(const ForwardStep& s, const float* h_prev, int64_t P, const at::Tensor& packed) {
  const int64_t nub = packed.size(0);
  const float* panels = packed.data_ptr<float>();
  for_blocks(s.rows, nub, P * 4 * W, [&](int64_t r0, int64_t R, int64_t ub) {
    const float* panel = panels + ub * P * 4 * W;
    FASTSEQ_ROWS_SWITCH(R, (forward_block<kR>(s, h_prev, P, panel, r0, ub * W)));
  });
}

void packed_backward_gemm(const float* dgates, int64_t rows, int64_t H, float* dh, int64_t P,
                          const at::Tensor& packed) {
  const int64_t npb = packed.size(0);
  const float* panels = packed.data_ptr<float>();
  for_blocks(rows, npb, 4 * H * 4 * W, [&](int64_t r0, int64_t R, int64_t pb) {
    const float* panel = panels + pb * 4 * H * 4 * W;
    FASTSEQ_ROWS_SWITCH(R, (backward_block<kR>(dgates, H, dh, P, panel, r0, pb * 4 * W)));
  });
}

}  // namespace lstm
}  // namespace fastseq
