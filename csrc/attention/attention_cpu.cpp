// CPU fused attention: a flash-style tiled forward (online softmax, the L x S scores never
// materialised, row log-sum-exp saved) and a flash-attention-2 backward that recomputes each
// probability tile from that log-sum-exp. float32 (and bfloat16 / float16 forwards, where
// oneDNN packs them) tile products go to oneDNN's brgemm micro-kernels; float64 and the
// remaining cases to the BLAS torch links or tile_gemm.h. Decoding (L < 16) has its own
// float32 flash-decoding forward.
#include "attention/attention.h"

#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <ATen/ops/empty.h>
#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "attention/attention_math.h"
#include "attention/attention_params.h"
#include "attention/attention_settings.h"
#include "attention/tile_gemm.h"

extern "C" {
// MKL / OpenBLAS inside libtorch export the Fortran GEMMs; ATen's cpublas::gemm wrappers are
// not exported from libtorch, so the tiles call the BLAS directly (single-threaded inside
// at::parallel_for, as torch's own CPU flash attention does).
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc);
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
            const double* beta, double* c, const int* ldc);
}

namespace fastseq {
namespace {

namespace am = attention_math;

template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// Row-major C[M,N] = alpha * op(A)[M,K] op(B)[K,N] + beta * C, issued as the column-major
// BLAS product C^T = op(B)^T op(A)^T.
inline void blas_gemm(const char* ta, const char* tb, const int* m, const int* n, const int* k,
                      const float* alpha, const float* a, const int* lda, const float* b,
                      const int* ldb, const float* beta, float* c, const int* ldc) {
  sgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
inline void blas_gemm(const char* ta, const char* tb, const int* m, const int* n, const int* k,
                      const double* alpha, const double* a, const int* lda, const double* b,
                      const int* ldb, const double* beta, double* c, const int* ldc) {
  dgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

template <typename T>
void gemm_rowmajor(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha,
                   const T* A, int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  const char ca = trans_a ? 'T' : 'N', cb = trans_b ? 'T' : 'N';
  const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
  const int la = static_cast<int>(std::max<int64_t>(ldb, 1));
  const int lb = static_cast<int>(std::max<int64_t>(lda, 1));
  const int lc = static_cast<int>(std::max<int64_t>(ldc, 1));
  blas_gemm(&cb, &ca, &m, &n, &k, &alpha, B, &la, A, &lb, &beta, C, &lc);
}

// With AVX-512 the tiles go through tile_gemm.h's register-blocked kernel: measured ~2.5x
// the throughput of the BLAS torch links (MKL takes a 256-bit path on AMD) on 64 x 256 x 64
// tiles, single thread, Zen 5. Elsewhere, or with the setting gemm="blas" (tests use it to
// cover both paths), the BLAS serves.
#if defined(__AVX512F__)
constexpr bool kHaveTileGemm = true;
#else
constexpr bool kHaveTileGemm = false;
#endif

// Row-major C[M,N] = alpha * op(A) op(B) + beta * C. A with trans_a is stored [K, M]. B with
// trans_b is stored [N, K]; tile_gemm takes it packed as row-major [K, N] in b_packed, or, when
// b_packed is null (few rows: packing would cost more than it saves), as dot products.
// tile: tile_gemm.h (Problem::tile_gemm) rather than the BLAS.
template <typename T>
void tile_product(bool tile, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha,
                  const T* A, int64_t lda, const T* B, int64_t ldb, const T* b_packed, T beta,
                  T* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (tile) {
    const int64_t a_row = trans_a ? 1 : lda, a_col = trans_a ? lda : 1;
    if (trans_b && b_packed == nullptr && !trans_a)
      tile_gemm::gemm_nt<T>(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    else if (trans_b)
      tile_gemm::gemm<T>(M, N, K, alpha, A, a_row, a_col, b_packed, N, beta, C, ldc);
    else
      tile_gemm::gemm<T>(M, N, K, alpha, A, a_row, a_col, B, ldb, beta, C, ldc);
  } else {
    gemm_rowmajor<T>(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  }
}

// Below this many query rows per packed key/value tile, the tiles are used as they are
// (tile_gemm::gemm_nt) rather than transposed: decoding steps (L = 1) are the case.
constexpr int64_t kMinRowsToPack = 16;

// Packs a key or value tile [n, d] (row stride ld) as [d, n] for tile_product's trans_b, when
// rows_using_it query rows will multiply it.
template <typename T>
const T* pack_transposed(bool tile, const T* src, int64_t n, int64_t d, int64_t ld, T* buf,
                         int64_t rows_using_it) {
  if (tile && rows_using_it >= kMinRowsToPack) {
    tile_gemm::transpose<T>(n, d, src, ld, buf, n);
    return buf;
  }
  return nullptr;
}

using attn::MaskKind;

// The shared problem (attention_params.h) at one element type, with this call's settings:
// typed pointers, and scale / keep_scale in the accumulation type. These deliberately hide
// Params' untyped q, k, v and double scalars, so a kernel cannot pick those up by mistake;
// every size and stride is Params' own.
template <typename scalar_t>
struct Problem : attn::Params {
  using acc_t = acc_type<scalar_t>;
  const scalar_t* q;
  const scalar_t* k;
  const scalar_t* v;
  const uint8_t* mask_bool;  // MaskKind::kBool, else null
  const scalar_t* mask_add;  // MaskKind::kAdditive, else null
  acc_t scale;
  acc_t keep_scale;
  // This call's settings (attention_settings.h), resolved against what the CPU has.
  AttentionSettings tune;
  bool tile_gemm;  // tile_gemm.h rather than the BLAS for the non-brgemm tiles
  bool brgemm;     // oneDNN brgemm where a kernel has a brgemm form

  explicit Problem(const attn::Params& p);
};

// A [rows, cols] slab with row stride ld as acc_t: the input itself when it already is acc_t,
// else converted into buf (bfloat16 -> float), so that BLAS sees float.
template <typename scalar_t, typename acc_t>
const acc_t* as_acc(const scalar_t* src, int64_t rows, int64_t cols, int64_t ld, acc_t* buf,
                    int64_t& ld_out) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    ld_out = ld;
    return src;
  } else {
    for (int64_t r = 0; r < rows; ++r) {
      const scalar_t* s = src + r * ld;
      acc_t* d = buf + r * cols;
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) d[c] = static_cast<acc_t>(s[c]);
    }
    ld_out = cols;
    return buf;
  }
}

// Applies attn_mask and the causal cut to the scaled scores of row i, keys [k0, k0 + n).
template <typename scalar_t, typename acc_t>
inline void mask_score_row(const Problem<scalar_t>& P, int64_t b, int64_t h, int64_t i, int64_t k0,
                           int64_t n, acc_t* s) {
  const acc_t ninf = -std::numeric_limits<acc_t>::infinity();
  if (P.mask_kind == MaskKind::kBool) {
    const uint8_t* m = P.mask_bool + b * P.m_sb + h * P.m_sh + i * P.m_sl + k0 * P.m_ss;
    if (P.m_ss == 1) {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) s[j] = m[j] ? s[j] : ninf;
    } else {
      for (int64_t j = 0; j < n; ++j) s[j] = m[j * P.m_ss] ? s[j] : ninf;
    }
  } else if (P.mask_kind == MaskKind::kAdditive) {
    const scalar_t* m = P.mask_add + b * P.m_sb + h * P.m_sh + i * P.m_sl + k0 * P.m_ss;
    if (P.m_ss == 1) {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) s[j] += static_cast<acc_t>(m[j]);
    } else {
      for (int64_t j = 0; j < n; ++j) s[j] += static_cast<acc_t>(m[j * P.m_ss]);
    }
  }
  if (P.causal) {
    // torch's is_causal keeps the lower triangle of ones(L, S): key j is seen by row i iff j <= i.
    for (int64_t j = std::max<int64_t>(0, i + 1 - k0); j < n; ++j) s[j] = ninf;
  }
}

// Row maximum over one 64-byte vector of lanes (GCC/Clang vector extension): `a > b ? a : b`
// is exactly vmaxps, while an omp simd max-reduction stays scalar with gcc 13.
template <typename acc_t>
inline acc_t row_max(const acc_t* s, int64_t n) {
  constexpr int kLanes = 64 / sizeof(acc_t);
  typedef acc_t lanes_t __attribute__((vector_size(64)));
  const acc_t ninf = -std::numeric_limits<acc_t>::infinity();
  lanes_t acc;
  for (int l = 0; l < kLanes; ++l) acc[l] = ninf;
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    lanes_t x;
    std::memcpy(&x, s + j, sizeof(x));
    acc = acc > x ? acc : x;
  }
  acc_t m = ninf;
  for (int l = 0; l < kLanes; ++l) m = m > acc[l] ? m : acc[l];
  for (; j < n; ++j) m = m > s[j] ? m : s[j];
  return m;
}

// s[j] <- exp(s[j] - shift); returns the sum.
template <typename acc_t>
inline acc_t exp_and_sum(acc_t* s, int64_t n, acc_t shift) {
  acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) {
    const acc_t p = am::fast_exp(s[j] - shift);
    s[j] = p;
    sum += p;
  }
  return sum;
}

template <typename scalar_t, typename acc_t>
inline void apply_dropout_row(const Problem<scalar_t>& P, uint32_t row, int64_t k0, int64_t n,
                              acc_t* s) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j)
    s[j] *= am::dropout_factor<acc_t>(P.seed, row, static_cast<uint32_t>(k0 + j), P.dropout_p,
                                      P.keep_scale);
}

// Per-thread scratch carved from one ATen allocation made on the calling thread: it shows in
// torch's memory profiler like any tensor (as torch's own flash kernel's buffers do).
template <typename acc_t>
class ThreadScratch {
 public:
  ThreadScratch(std::initializer_list<int64_t> sizes) {
    for (int64_t n : sizes) {
      offsets_.push_back(per_thread_);
      per_thread_ += (n + 15) / 16 * 16;  // 64-byte aligned slices
    }
    buffer_ = at::empty({at::get_num_threads(), std::max<int64_t>(per_thread_, 1)},
                        at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value));
  }
  // Slice `which` of the calling thread's share.
  acc_t* get(size_t which) const {
    return buffer_.data_ptr<acc_t>() + at::get_thread_num() * per_thread_ + offsets_[which];
  }

 private:
  std::vector<int64_t> offsets_;
  int64_t per_thread_ = 0;
  at::Tensor buffer_;
};

// ---------------------------------------------------------------------------------------------
// oneDNN's brgemm micro-kernels (what torch's own CPU flash attention calls): row-major
// C[M, N] (+)= A[M, K] B[K, N] with leading dimensions, no alpha. float32 tiles go through them
// where oneDNN's ukernel API serves this CPU (x86-64 with AVX-512); the settings gemm="blas"
// or "tile" keep the older paths (tests cover them).

namespace cpublas = at::native::cpublas;

// Whether oneDNN's brgemm runs on this CPU: probed once (it is the hardware's answer).
bool brgemm_available() {
  static const bool ok = [] {
    try {
      float a[16] = {1.f}, b[16 * 16] = {}, c[16 * 16];
      b[0] = 2.f;
      cpublas::brgemm(1, 16, 1, 1, 16, 16, false, a, b, c, false);
      cpublas::brgemm_release(false);
      return c[0] == 2.f;
    } catch (...) {
      return false;
    }
  }();
  return ok;
}

// A leading dimension for n floats: a multiple of 16 floats plus 16, so that rows of a tile
// never sit a power of two apart (cache-set conflicts).
inline int64_t padded_ld(int64_t n) { return (n + 15) / 16 * 16 + 16; }

// Query rows per forward task: bigger tiles amortise each key/value tile over more rows; the
// score tile (rows x key block floats) stays well inside a 2 MB L2.
inline int64_t br_block_q(const AttentionSettings& tune, int64_t L) {
  if (tune.br_block_q > 0) return tune.br_block_q;
  return L >= 768 ? 256 : (L >= 192 ? 64 : 32);
}

// Keys per backward tile: under is_causal, 64-key tiles let each start its query tiles nearer
// the diagonal (less work masked away); without it, 128 keys amortise each dO V^T and Q^T dS
// over more columns. Measured on a 2-core Xeon (AMX), train, vs 128 keys: causal B=32 H=4
// L=128 D=32 1.13x -> 1.25x torch, L=512 D=64 1.47x -> 1.57x; full L=512 D=128 with 64 keys
// 1.04x -> 0.95x.
inline int64_t br_block_k_bwd(const AttentionSettings& tune, bool causal) {
  if (tune.br_block_k_bwd > 0) return tune.br_block_k_bwd;
  return causal ? 64 : 128;
}

typedef float f32x16 __attribute__((vector_size(64)));

typedef int32_t i32x16 __attribute__((vector_size(64)));

inline f32x16 load16(const float* p) {
  f32x16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void store16(float* p, f32x16 v) { std::memcpy(p, &v, sizeof(v)); }

// attention_math::fast_exp on 16 lanes at once, operation for operation (the same results):
// gcc vectorises the scalar form only at 256 bits, with masked blends.
inline f32x16 fast_exp16(f32x16 x) {
  const f32x16 t = x * 1.4426950408889634f;
  f32x16 tc = t < -126.f ? f32x16{} - 126.f : t;
  tc = tc > 127.f ? f32x16{} + 127.f : tc;
#if defined(__AVX512F__)
  // Round to nearest even in one vrndscaleps: the same n as the 1.5 * 2^23 trick below.
  const f32x16 n = reinterpret_cast<f32x16>(
      _mm512_maskz_roundscale_ps(0xFFFF, reinterpret_cast<__m512>(tc), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#else
  const f32x16 n = (tc + 12582912.f) - 12582912.f;
#endif
  const f32x16 f = tc - n;
  f32x16 p = f * 1.5353362e-4f + 1.3398874e-3f;
  p = p * f + 9.6182299e-3f;
  p = p * f + 5.5503324e-2f;
  p = p * f + 2.4022648e-1f;
  p = p * f + 6.9314718e-1f;
  p = p * f + 1.0f;
#if defined(__AVX512F__)
  // p * 2^n by vscalefps: exactly the product below (n is an integer in [-126, 127], the
  // product correctly rounded either way) in one instruction instead of four.
  const f32x16 r = reinterpret_cast<f32x16>(_mm512_maskz_scalef_ps(0xFFFF, reinterpret_cast<__m512>(p), reinterpret_cast<__m512>(n)));
#else
  const i32x16 bits = (__builtin_convertvector(n, i32x16) + 127) << 23;
  f32x16 scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  const f32x16 r = p * scale;
#endif
  return t < -126.f ? f32x16{} : r;
}

// Maximum of n floats.
inline float max16(const float* s, int64_t n) {
  const float ninf = -std::numeric_limits<float>::infinity();
  f32x16 acc = f32x16{} + ninf;
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const f32x16 x = load16(s + j);
    acc = acc > x ? acc : x;
  }
  float m = ninf;
  for (int l = 0; l < 16; ++l) m = m > acc[l] ? m : acc[l];
  for (; j < n; ++j) m = m > s[j] ? m : s[j];
  return m;
}

// s[j] <- exp(s[j] * scale - shift) over n floats; returns their sum.
inline float exp_sum16(float* s, int64_t n, float scale, float shift) {
  f32x16 acc{};
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const f32x16 p = fast_exp16(load16(s + j) * scale - shift);
    store16(s + j, p);
    acc += p;
  }
  float sum = 0.f;
  for (int l = 0; l < 16; ++l) sum += acc[l];
  for (; j < n; ++j) {
    s[j] = am::fast_exp(s[j] * scale - shift);
    sum += s[j];
  }
  return sum;
}

// s[j] *= scale over n floats; returns the maximum of the scaled values.
inline float scale_and_max(float* s, int64_t n, float scale) {
  const float ninf = -std::numeric_limits<float>::infinity();
  f32x16 acc;
  for (int l = 0; l < 16; ++l) acc[l] = ninf;
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    f32x16 x;
    std::memcpy(&x, s + j, sizeof(x));
    x *= scale;
    std::memcpy(s + j, &x, sizeof(x));
    acc = acc > x ? acc : x;
  }
  float m = ninf;
  for (int l = 0; l < 16; ++l) m = m > acc[l] ? m : acc[l];
  for (; j < n; ++j) {
    s[j] *= scale;
    m = m > s[j] ? m : s[j];
  }
  return m;
}

// A window of one head's [n, d] matrix (row stride ld), transposed: the K^T / V^T operands
// of both brgemm kernels, in a per-thread [d, ld_t] buffer of `capacity` columns. It is kept
// while a thread's consecutive tasks stay on one (batch, key head) and extended as the rows
// asked for advance, so no row is transposed twice: the forward (capacity S) grows it with
// its query tiles' causal frontier, the backward (capacity one key tile, which stays in L2:
// a buffer of S columns measured ~10% slower there) moves it tile by tile.
class TransposedRows {
 public:
  TransposedRows(float* buf, int64_t ld_t, int64_t capacity)
      : buf_(buf), ld_t_(ld_t), capacity_(capacity) {}
  // Rows [from, to) (to - from <= capacity) of head `id` at src; returns the column of row
  // `from` (row j at column + (j - from), columns ld_t apart).
  const float* get(int64_t id, const float* src, int64_t ld, int64_t d, int64_t from, int64_t to) {
    if (id != id_ || from < lo_ || from > hi_ || to - lo_ > capacity_) {  // start over at from
      id_ = id;
      lo_ = hi_ = from;
    }
    if (to > hi_) {
      tile_gemm::transpose<float>(to - hi_, d, src + hi_ * ld, ld, buf_ + (hi_ - lo_), ld_t_);
      hi_ = to;
    }
    return buf_ + (from - lo_);
  }

 private:
  float* buf_;
  int64_t ld_t_, capacity_;
  int64_t id_ = -1, lo_ = 0, hi_ = 0;
};

// How attn_mask treats a (query tile, key tile): every pair attends (run it unmasked), none
// does (skip it), or some (read the mask). Read once per tile and task: a row-independent mask
// (key padding, m_sl = 0) reads one row; anything else (NaN, finite additive entries) is mixed.
enum class TileMask { kOpen, kClosed, kMixed };

template <typename scalar_t>
TileMask classify_tile(const Problem<scalar_t>& P, int64_t b, int64_t h, int64_t q0, int64_t nq,
                       int64_t k0, int64_t nk) {
  if (P.mask_kind == MaskKind::kNone) return TileMask::kOpen;
  const int64_t rows = P.m_sl == 0 ? 1 : nq;
  bool open = false, closed = false;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t off = b * P.m_sb + h * P.m_sh + (q0 + r) * P.m_sl + k0 * P.m_ss;
    if (P.mask_kind == MaskKind::kBool) {
      const uint8_t* m = P.mask_bool + off;
      uint8_t any = 0, all = 1;
      for (int64_t j = 0; j < nk; ++j) {
        const uint8_t x = m[j * P.m_ss] != 0;
        any |= x;
        all &= x;
      }
      open |= any != 0;
      closed |= all == 0;
    } else {
      const scalar_t* m = P.mask_add + off;
      const auto ninf = -std::numeric_limits<float>::infinity();
      bool zero = true, minus_inf = true;
      for (int64_t j = 0; j < nk; ++j) {
        const float x = static_cast<float>(m[j * P.m_ss]);
        zero &= x == 0.f;
        minus_inf &= x == ninf;
      }
      if (!zero && !minus_inf) return TileMask::kMixed;
      open |= zero;
      closed |= minus_inf;
    }
    if (open && closed) return TileMask::kMixed;
  }
  return closed ? TileMask::kClosed : TileMask::kOpen;
}

// The max of one row of raw scores Q K^T (n keys from k0) as the softmax sees them. `fold`
// (unmasked, positive scale): the scale folds into the exponent instead, as max(scale * s)
// is scale * max(s) exactly (rounding is monotonic), so the row is read twice, written once;
// otherwise the row is scaled (and masked when `masked`) in place first.
inline float scored_row_max(const Problem<float>& P, int64_t b, int64_t h, int64_t i, int64_t k0, int64_t n,
                            float* srow, bool masked, bool fold) {
  if (fold) return P.scale * max16(srow, n);
  const float mx = scale_and_max(srow, n, P.scale);
  if (!masked) return mx;
  mask_score_row(P, b, h, i, k0, n, srow);
  return max16(srow, n);
}

// One forward task of a flattened (batch, query head, query tile) index: its key head (GQA),
// the tile's rows and the head pointers. Under causal, keys past the tile's last row are
// masked for every row, so the tile reads keys [0, kv_end) only.
template <typename scalar_t>
struct QueryTile {
  int64_t bh, b, h, hk, q0, nq, kv_end;
  const scalar_t* q;  // the tile's first query row
  const scalar_t* k;  // the key head
  const scalar_t* v;  // the value head
  QueryTile(const Problem<scalar_t>& P, int64_t task, int64_t n_q_tiles, int64_t Bq)
      : bh(task / n_q_tiles), b(bh / P.Hq), h(bh % P.Hq), hk(h / P.group), q0(task % n_q_tiles * Bq),
        nq(std::min(Bq, P.L - q0)), kv_end(P.causal ? std::min(P.S, q0 + nq) : P.S),
        q(P.q + b * P.q_sb + h * P.q_sh + q0 * P.q_sl), k(P.k + b * P.k_sb + hk * P.k_sh),
        v(P.v + b * P.v_sb + hk * P.v_sh) {}
};

// float32 forward without a weights output, for L >= kMinRowsToPack: per task (batch, head,
// query tile) the score tile Q K^T comes from one brgemm against the head's K^T (transposed
// once per thread and head, kept while the thread's consecutive tasks stay on that head),
// is scaled, masked and folded into the online softmax while it is in L1/L2, and P V is a
// second brgemm accumulating into the output tile.
void forward_brgemm(const Problem<float>& P, float* out, float* lse) {
  const int64_t L = P.L, S = P.S, E = P.E, Ev = P.Ev;
  const int64_t Bq = std::min(br_block_q(P.tune, L), L);
  const int64_t Bk = std::max<int64_t>(1, std::min(P.tune.br_block_k, S));
  const int64_t lds = padded_ld(Bk), ldkt = padded_ld(S);
  const int64_t n_q_tiles = (L + Bq - 1) / Bq;
  const bool dropout = P.dropout_p > 0.f;
  const float ninf = -std::numeric_limits<float>::infinity();
  const ThreadScratch<float> scratch({Bq * lds, Bq * Ev, Bq, Bq, E * ldkt});
  at::parallel_for(0, P.B * P.Hq * n_q_tiles, 1, [&](int64_t begin, int64_t end) {
    float* const s = scratch.get(0);
    float* const o = scratch.get(1);
    float* const m_run = scratch.get(2);
    float* const l_run = scratch.get(3);
    TransposedRows k_t(scratch.get(4), ldkt, S);
    for (int64_t task = begin; task < end; ++task) {
      const auto [bh, b, h, hk, q0, nq, kv_end, qa, k_head, v_head] = QueryTile<float>(P, task, n_q_tiles, Bq);
      const float* kt = k_t.get(b * P.Hk + hk, k_head, P.k_ss, E, 0, kv_end);
      std::fill(m_run, m_run + nq, ninf);
      std::fill(l_run, l_run + nq, 0.f);
      std::fill(o, o + nq * Ev, 0.f);
      for (int64_t k0 = 0; k0 < kv_end; k0 += Bk) {
        const int64_t nk = std::min(Bk, kv_end - k0);
        const TileMask tm = classify_tile(P, b, h, q0, nq, k0, nk);
        if (tm == TileMask::kClosed) continue;
        const bool masked = tm == TileMask::kMixed;
        cpublas::brgemm(nq, nk, E, P.q_sl, ldkt, lds, false, qa, kt + k0, s, false);
        // Causal: only a tile reaching past its first row's diagonal cuts rows short.
        const bool causal_cut = P.causal && k0 + nk - 1 > q0;
        for (int64_t r = 0; r < nq; ++r) {
          const int64_t i = q0 + r;
          float* srow = s + r * lds;
          const int64_t n = causal_cut ? std::clamp<int64_t>(i + 1 - k0, 0, nk) : nk;
          const bool fold = !masked && P.scale > 0.f;
          const float mx = scored_row_max(P, b, h, i, k0, n, srow, masked, fold);
          const auto step = am::online_softmax_step(m_run[r], mx);
          const float sum =
              exp_sum16(srow, n, fold ? P.scale : 1.f, am::softmax_shift(step.m_new));
          std::fill(srow + n, srow + nk, 0.f);
          l_run[r] = l_run[r] * step.rescale + sum;
          m_run[r] = step.m_new;
          float* orow = o + r * Ev;
          if (step.rescale != 1.f) {
#pragma omp simd
            for (int64_t e = 0; e < Ev; ++e) orow[e] *= step.rescale;
          }
          if (dropout) apply_dropout_row(P, P.dropout_row(b, h, i), k0, nk, srow);
        }
        cpublas::brgemm(nq, Ev, nk, lds, P.v_ss, Ev, true, s, v_head + k0 * P.v_ss, o, false);
      }
      for (int64_t r = 0; r < nq; ++r) {
        const int64_t row = (b * P.Hq + h) * L + q0 + r;
        const float inv = am::inverse_row_sum(l_run[r]);
        float* dst = out + P.out_rows.at(b, h, q0 + r);
        const float* src = o + r * Ev;
#pragma omp simd
        for (int64_t e = 0; e < Ev; ++e) dst[e] = src[e] * inv;
        lse[row] = am::row_logsumexp(m_run[r], l_run[r]);
      }
    }
    cpublas::brgemm_release(false);
  });
}

// float32 decoding forward (L < kMinRowsToPack, no weights output): flash-decoding. A task is
// one (batch, key head) unit and a share of its keys; all G x L query rows of the unit's query
// heads go together, so each key and value row is read once for all of them (grouped-query
// attention reads its cache once). When units are fewer than threads x 4, the keys are split
// and each share's (max, sum, output) partials are merged at the end.
typedef float f32x8 __attribute__((vector_size(32)));
typedef float f32x4 __attribute__((vector_size(16)));

// The lane sums of four 16-lane vectors: d[i] = sum of a_i's lanes.
inline void hsum4(f32x16 a0, f32x16 a1, f32x16 a2, f32x16 a3, float* d) {
  // 16 -> 8 lanes each, then pairwise interleaved folds down to one 4-lane vector.
  const f32x8 b0 = __builtin_shufflevector(a0, a0, 0, 1, 2, 3, 4, 5, 6, 7) +
                   __builtin_shufflevector(a0, a0, 8, 9, 10, 11, 12, 13, 14, 15);
  const f32x8 b1 = __builtin_shufflevector(a1, a1, 0, 1, 2, 3, 4, 5, 6, 7) +
                   __builtin_shufflevector(a1, a1, 8, 9, 10, 11, 12, 13, 14, 15);
  const f32x8 b2 = __builtin_shufflevector(a2, a2, 0, 1, 2, 3, 4, 5, 6, 7) +
                   __builtin_shufflevector(a2, a2, 8, 9, 10, 11, 12, 13, 14, 15);
  const f32x8 b3 = __builtin_shufflevector(a3, a3, 0, 1, 2, 3, 4, 5, 6, 7) +
                   __builtin_shufflevector(a3, a3, 8, 9, 10, 11, 12, 13, 14, 15);
  const f32x4 c0 = __builtin_shufflevector(b0, b0, 0, 1, 2, 3) + __builtin_shufflevector(b0, b0, 4, 5, 6, 7);
  const f32x4 c1 = __builtin_shufflevector(b1, b1, 0, 1, 2, 3) + __builtin_shufflevector(b1, b1, 4, 5, 6, 7);
  const f32x4 c2 = __builtin_shufflevector(b2, b2, 0, 1, 2, 3) + __builtin_shufflevector(b2, b2, 4, 5, 6, 7);
  const f32x4 c3 = __builtin_shufflevector(b3, b3, 0, 1, 2, 3) + __builtin_shufflevector(b3, b3, 4, 5, 6, 7);
  // Transpose-add the four 4-lane vectors: lane i of the result sums c_i.
  const f32x4 e01 = __builtin_shufflevector(c0, c1, 0, 4, 1, 5) + __builtin_shufflevector(c0, c1, 2, 6, 3, 7);
  const f32x4 e23 = __builtin_shufflevector(c2, c3, 0, 4, 1, 5) + __builtin_shufflevector(c2, c3, 2, 6, 3, 7);
  const f32x4 r = __builtin_shufflevector(e01, e23, 0, 1, 4, 5) + __builtin_shufflevector(e01, e23, 2, 3, 6, 7);
  std::memcpy(d, &r, sizeof(r));
}

constexpr int64_t kDecodeBlock = 256;   // keys per score block
constexpr int64_t kDecodeMinKeys = 512;  // fewest keys a split takes

void forward_decode(const Problem<float>& P, float* out, float* lse) {
  const int64_t L = P.L, S = P.S, E = P.E, Ev = P.Ev, G = P.group, R = G * L;
  const int64_t units = P.B * P.Hk, threads = at::get_num_threads();
  const int64_t want = (4 * threads + units - 1) / units;
  const int64_t splits = std::max<int64_t>(1, std::min(want, S / kDecodeMinKeys));
  const int64_t per_split = (S + splits - 1) / splits;
  const float ninf = -std::numeric_limits<float>::infinity();
  const bool dropout = P.dropout_p > 0.f;
  // Partials: per (unit, split) R maxima, R sums, R x Ev outputs (unnormalised).
  at::Tensor part = at::empty({units * splits, R * (2 + Ev)}, at::TensorOptions().dtype(at::kFloat));
  float* const part_base = part.data_ptr<float>();
  const ThreadScratch<float> scratch({R * kDecodeBlock});
  at::parallel_for(0, units * splits, 1, [&](int64_t begin, int64_t end) {
    float* const sc = scratch.get(0);
    std::vector<const float*> qrow(R);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t unit = task / splits, split = task % splits;
      const int64_t b = unit / P.Hk, hk = unit % P.Hk;
      float* const m_run = part_base + task * R * (2 + Ev);
      float* const l_run = m_run + R;
      float* const o = l_run + R;
      std::fill(m_run, m_run + R, ninf);
      std::fill(l_run, l_run + R, 0.f);
      std::fill(o, o + R * Ev, 0.f);
      for (int64_t r = 0; r < R; ++r)
        qrow[r] = P.q + b * P.q_sb + (hk * G + r / L) * P.q_sh + (r % L) * P.q_sl;
      const float* k_head = P.k + b * P.k_sb + hk * P.k_sh;
      const float* v_head = P.v + b * P.v_sb + hk * P.v_sh;
      const int64_t s_begin = split * per_split;
      int64_t s_end = std::min(S, s_begin + per_split);
      if (P.causal) s_end = std::min(s_end, L);  // row i sees keys j <= i < L
      for (int64_t k0 = s_begin; k0 < s_end; k0 += kDecodeBlock) {
        const int64_t nk = std::min(kDecodeBlock, s_end - k0);
        // Four keys at a time per row: four accumulators, their lanes summed by one tree.
        int64_t j = 0;
        for (; j + 4 <= nk; j += 4) {
          const float* kr = k_head + (k0 + j) * P.k_ss;
          for (int64_t r = 0; r < R; ++r) {
            const float* qr = qrow[r];
            f32x16 a0{}, a1{}, a2{}, a3{};
            int64_t e = 0;
            for (; e + 16 <= E; e += 16) {
              const f32x16 qv = load16(qr + e);
              a0 += qv * load16(kr + e);
              a1 += qv * load16(kr + P.k_ss + e);
              a2 += qv * load16(kr + 2 * P.k_ss + e);
              a3 += qv * load16(kr + 3 * P.k_ss + e);
            }
            float d[4];
            hsum4(a0, a1, a2, a3, d);
            for (; e < E; ++e) {
              d[0] += qr[e] * kr[e];
              d[1] += qr[e] * kr[P.k_ss + e];
              d[2] += qr[e] * kr[2 * P.k_ss + e];
              d[3] += qr[e] * kr[3 * P.k_ss + e];
            }
            std::memcpy(sc + r * kDecodeBlock + j, d, sizeof(d));
          }
        }
        for (; j < nk; ++j) {
          const float* kr = k_head + (k0 + j) * P.k_ss;
          for (int64_t r = 0; r < R; ++r) {
            const float* qr = qrow[r];
            float d = 0.f;
            for (int64_t e = 0; e < E; ++e) d += qr[e] * kr[e];
            sc[r * kDecodeBlock + j] = d;
          }
        }
        for (int64_t r = 0; r < R; ++r) {
          const int64_t g = r / L, i = r % L, h = hk * G + g;
          float* srow = sc + r * kDecodeBlock;
          float mx = scale_and_max(srow, nk, P.scale);
          if (P.mask_kind != MaskKind::kNone || P.causal) {
            mask_score_row(P, b, h, i, k0, nk, srow);
            mx = max16(srow, nk);
          }
          const auto step = am::online_softmax_step(m_run[r], mx);
          const float sum = exp_sum16(srow, nk, 1.f, am::softmax_shift(step.m_new));
          l_run[r] = l_run[r] * step.rescale + sum;
          m_run[r] = step.m_new;
          if (step.rescale != 1.f) {
            float* orow = o + r * Ev;
#pragma omp simd
            for (int64_t e = 0; e < Ev; ++e) orow[e] *= step.rescale;
          }
          if (dropout) apply_dropout_row(P, P.dropout_row(b, h, i), k0, nk, srow);
        }
        // Four value rows per pass over each output row.
        j = 0;
        for (; j + 4 <= nk; j += 4) {
          const float* v0 = v_head + (k0 + j) * P.v_ss;
          const float* v1 = v0 + P.v_ss;
          const float* v2 = v1 + P.v_ss;
          const float* v3 = v2 + P.v_ss;
          for (int64_t r = 0; r < R; ++r) {
            const float* pr = sc + r * kDecodeBlock + j;
            const float p0 = pr[0], p1 = pr[1], p2 = pr[2], p3 = pr[3];
            float* orow = o + r * Ev;
#pragma omp simd
            for (int64_t e = 0; e < Ev; ++e)
              orow[e] += (p0 * v0[e] + p1 * v1[e]) + (p2 * v2[e] + p3 * v3[e]);
          }
        }
        for (; j < nk; ++j) {
          const float* vr = v_head + (k0 + j) * P.v_ss;
          for (int64_t r = 0; r < R; ++r) {
            const float pj = sc[r * kDecodeBlock + j];
            float* orow = o + r * Ev;
#pragma omp simd
            for (int64_t e = 0; e < Ev; ++e) orow[e] += pj * vr[e];
          }
        }
      }
    }
  });
  // Merge the splits of each row: M = max m_s, l = sum l_s e^(m_s - M), O = sum O_s e^(m_s - M).
  at::parallel_for(0, units * R, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(Ev);
    for (int64_t x = begin; x < end; ++x) {
      const int64_t unit = x / R, r = x % R;
      const int64_t b = unit / P.Hk, hk = unit % P.Hk, h = hk * G + r / L, i = r % L;
      float M = ninf;
      for (int64_t sp = 0; sp < splits; ++sp) {
        const float m = part_base[(unit * splits + sp) * R * (2 + Ev) + r];
        M = M > m ? M : m;
      }
      float l = 0.f;
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t sp = 0; sp < splits; ++sp) {
        const float* base = part_base + (unit * splits + sp) * R * (2 + Ev);
        const float m = base[r];
        const float f = splits == 1 ? 1.f : (m == ninf ? 0.f : am::fast_exp(m - M));
        l += f * base[R + r];
        const float* os = base + 2 * R + r * Ev;
        for (int64_t e = 0; e < Ev; ++e) acc[e] += f * os[e];
      }
      const int64_t row = (b * P.Hq + h) * L + i;
      const float inv = am::inverse_row_sum(l);
      float* dst = out + P.out_rows.at(b, h, i);
      for (int64_t e = 0; e < Ev; ++e) dst[e] = acc[e] * inv;
      lse[row] = am::row_logsumexp(M, l);
    }
  });
}

// float32 forward that also returns the weights (need_weights), brgemm usable: per task
// (batch, head, query tile) the scores of whole rows go by brgemm straight into the weights
// output (its rows are the score buffer), are scaled, masked and normalised there by the
// exact two-step softmax (the rows are materialised anyway), and P V is one brgemm reading
// them in place. The head's K^T is kept across a thread's tasks as in forward_brgemm.
// One query tile of it: the scores by brgemm straight into w (the tile's weight rows, row
// stride S), the exact softmax (and dropout) there, the rows' lse, and P V into out through
// the per-thread output tile o.
void weights_tile(const Problem<float>& P, const QueryTile<float>& t, TransposedRows& k_t, float* w,
                  float* o, float* out, float* lse) {
  const int64_t S = P.S, E = P.E, Ev = P.Ev;
  const int64_t Bk = std::max<int64_t>(1, std::min(P.tune.br_block_k, S));
  if (t.kv_end > 0) {
    const float* kt = k_t.get(t.b * P.Hk + t.hk, t.k, P.k_ss, E, 0, t.kv_end);
    for (int64_t k0 = 0; k0 < t.kv_end; k0 += Bk)
      cpublas::brgemm(t.nq, std::min(Bk, t.kv_end - k0), E, P.q_sl, padded_ld(S), S, false, t.q, kt + k0,
                      w + k0, false);
  }
  for (int64_t r = 0; r < t.nq; ++r) {
    const int64_t i = t.q0 + r;
    float* srow = w + r * S;
    const int64_t n = P.causal ? std::min(t.kv_end, i + 1) : t.kv_end;
    const bool masked = P.mask_kind != MaskKind::kNone, fold = !masked && P.scale > 0.f;
    const float m = scored_row_max(P, t.b, t.h, i, 0, n, srow, masked, fold);
    const float sum = exp_sum16(srow, n, fold ? P.scale : 1.f, am::softmax_shift(m));
    const float inv = am::inverse_row_sum(sum);
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) srow[j] *= inv;
    std::fill(srow + n, srow + S, 0.f);
    if (P.dropout_p > 0.f) apply_dropout_row(P, P.dropout_row(t.b, t.h, i), 0, n, srow);
    lse[t.bh * P.L + i] = am::row_logsumexp(m, sum);
  }
  if (t.kv_end > 0) {
    cpublas::brgemm(t.nq, Ev, t.kv_end, S, P.v_ss, Ev, false, w, t.v, o, false);
  } else {
    std::fill(o, o + t.nq * Ev, 0.f);
  }
  for (int64_t r = 0; r < t.nq; ++r) std::copy(o + r * Ev, o + (r + 1) * Ev, out + P.out_rows.at(t.b, t.h, t.q0 + r));
}

void forward_brgemm_weights(const Problem<float>& P, float* out, float* lse, float* weights) {
  const int64_t L = P.L, S = P.S;
  const int64_t Bq = std::min(br_block_q(P.tune, L), L);
  const int64_t n_q_tiles = (L + Bq - 1) / Bq;
  const ThreadScratch<float> scratch({Bq * P.Ev, P.E * padded_ld(S)});
  at::parallel_for(0, P.B * P.Hq * n_q_tiles, 1, [&](int64_t begin, int64_t end) {
    TransposedRows k_t(scratch.get(1), padded_ld(S), S);
    for (int64_t task = begin; task < end; ++task) {
      const QueryTile<float> t(P, task, n_q_tiles, Bq);
      weights_tile(P, t, k_t, weights + (t.bh * L + t.q0) * S, scratch.get(0), out, lse);
    }
    cpublas::brgemm_release(false);
  });
}

// float32 forward returning the weights averaged over the query heads ([B, L, S]: what
// nn.MultiheadAttention returns by default), brgemm usable, for calls that need no gradient
// (the backward reads per-head weights). A task is one batch and a share of its query
// tiles, the heads looped inside: each head's weights tile is made in per-thread scratch
// (weights_tile), multiplied into the output and added into the average while it is in L2,
// so per-head weights never reach memory and no separate mean pass reads them back.
void forward_brgemm_averaged_weights(const Problem<float>& P, float* out, float* lse, float* avg) {
  const int64_t L = P.L, S = P.S;
  const int64_t Bq = std::min(br_block_q(P.tune, L), L);
  const int64_t n_q_tiles = (L + Bq - 1) / Bq;
  // Shares of each batch's query tiles: at least two tasks per thread where L allows.
  const int64_t threads = at::get_num_threads();
  const int64_t shares = std::min(n_q_tiles, std::max<int64_t>(1, (2 * threads + P.B - 1) / P.B));
  const int64_t tiles_per_share = (n_q_tiles + shares - 1) / shares;
  const float inv_heads = 1.f / static_cast<float>(P.Hq);
  const ThreadScratch<float> scratch({Bq * P.Ev, P.E * padded_ld(S), Bq * S});
  at::parallel_for(0, P.B * shares, 1, [&](int64_t begin, int64_t end) {
    TransposedRows k_t(scratch.get(1), padded_ld(S), S);
    float* const w = scratch.get(2);  // one head's weights tile [nq, S]
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / shares, share = task % shares;
      const int64_t t_begin = share * tiles_per_share, t_end = std::min(n_q_tiles, t_begin + tiles_per_share);
      for (int64_t h = 0; h < P.Hq; ++h) {
        for (int64_t tile = t_begin; tile < t_end; ++tile) {
          const QueryTile<float> t(P, (b * P.Hq + h) * n_q_tiles + tile, n_q_tiles, Bq);
          weights_tile(P, t, k_t, w, scratch.get(0), out, lse);
          float* const a = avg + (b * L + t.q0) * S;  // the tile's rows of the average
          for (int64_t x = 0; x < t.nq * S; ++x) a[x] = (h == 0 ? 0.f : a[x]) + w[x] * inv_heads;
        }
      }
    }
    cpublas::brgemm_release(false);
  });
}

// The brgemm forward where it applies (float32, brgemm usable): true when it ran.
template <typename scalar_t>
bool try_forward_brgemm(const Problem<scalar_t>&, scalar_t*, acc_type<scalar_t>*) {
  return false;
}
template <>
bool try_forward_brgemm<float>(const Problem<float>& P, float* out, float* lse) {
  if (P.L < kMinRowsToPack) {
    forward_decode(P, out, lse);
    return true;
  }
  if (!P.brgemm) return false;
  forward_brgemm(P, out, lse);
  return true;
}

// bfloat16 / float16 forward without a weights output (L >= kMinRowsToPack, E even) where
// oneDNN packs these types (AMX / AVX-512 VNNI): the forward_brgemm scheme with both products
// on packed operands, as torch's own CPU flash kernel does: per thread and head, K^T in blocks
// of 64 keys and V in blocks of 64 columns, packed once (VNNI pairs of rows); the probability
// tile is rounded to the input type for P V; scores, softmax and the output accumulate in float.
constexpr int64_t kPackN = 64;  // oneDNN's pack takes output widths 16..64

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// dst[j] = src[j] rounded to scalar_t: bfloat16 by round-to-nearest-even on 16 lanes (the
// same bits as c10::BFloat16's conversion, NaN kept a NaN), anything else element by element.
template <typename scalar_t>
inline void round_row(const float* src, scalar_t* dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = static_cast<scalar_t>(src[j]);
}
template <>
inline void round_row<c10::BFloat16>(const float* src, c10::BFloat16* dst, int64_t n) {
  typedef uint32_t u32x16 __attribute__((vector_size(64)));
  typedef uint16_t u16x16 __attribute__((vector_size(32)));
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const f32x16 x = load16(src + j);
    u32x16 bits;
    std::memcpy(&bits, &x, sizeof(bits));
    const u32x16 rounded = (bits + (((bits >> 16) & 1u) + 0x7fffu)) >> 16;
    const u32x16 r = x != x ? u32x16{} + 0x7fc0u : rounded;
    const u16x16 h = __builtin_convertvector(r, u16x16);
    std::memcpy(dst + j, &h, sizeof(h));
  }
  for (; j < n; ++j) dst[j] = static_cast<c10::BFloat16>(src[j]);
}

template <typename scalar_t>
void forward_brgemm_reduced(const Problem<scalar_t>& P, scalar_t* out, float* lse) {
  const int64_t L = P.L, S = P.S, E = P.E, Ev = P.Ev;
  const at::ScalarType dt = c10::CppTypeToScalarType<scalar_t>::value;
  const int64_t Bq = std::min(br_block_q(P.tune, L), L);
  const int64_t Bk = std::max<int64_t>(kPackN, std::min(P.tune.br_block_k / kPackN * kPackN, round_up(S, kPackN)));
  const int64_t lds = Bk + 16, ldp = Bk + 32, ldo = round_up(Ev, kPackN);
  const int64_t S64 = round_up(S, kPackN), S2 = round_up(S, 2);
  const int64_t n_q_tiles = (L + Bq - 1) / Bq;
  const bool dropout = P.dropout_p > 0.f;
  const float ninf = -std::numeric_limits<float>::infinity();
  auto halves = [](int64_t n) { return (n + 1) / 2; };  // scalar_t elements carved from floats
  const ThreadScratch<float> scratch({Bq * lds, Bq * ldo, Bq, Bq, halves(Bq * ldp),
                                      halves(E * S64), halves(ldo * S2), halves(E * kPackN),
                                      halves(S2 * kPackN)});
  at::parallel_for(0, P.B * P.Hq * n_q_tiles, 1, [&](int64_t begin, int64_t end) {
    float* const s = scratch.get(0);
    float* const o = scratch.get(1);
    float* const m_run = scratch.get(2);
    float* const l_run = scratch.get(3);
    scalar_t* const pb = reinterpret_cast<scalar_t*>(scratch.get(4));
    scalar_t* const kpack = reinterpret_cast<scalar_t*>(scratch.get(5));
    scalar_t* const vpack = reinterpret_cast<scalar_t*>(scratch.get(6));
    scalar_t* const tbuf = reinterpret_cast<scalar_t*>(scratch.get(7));
    scalar_t* const vbuf = reinterpret_cast<scalar_t*>(scratch.get(8));
    int64_t cached_head = -1;
    for (int64_t task = begin; task < end; ++task) {
      const auto [bh, b, h, hk, q0, nq, kv_end, qa, k_head, v_head] = QueryTile<scalar_t>(P, task, n_q_tiles, Bq);
      if (b * P.Hk + hk != cached_head) {
        cached_head = b * P.Hk + hk;
        for (int64_t k0 = 0; k0 < S; k0 += kPackN) {
          const int64_t n = std::min(kPackN, S - k0);
          std::fill(tbuf, tbuf + E * kPackN, scalar_t(0));
          tile_gemm::transpose<scalar_t>(n, E, k_head + k0 * P.k_ss, P.k_ss, tbuf, kPackN);
          cpublas::pack(E, kPackN, kPackN, kPackN, dt, dt, tbuf, kpack + k0 * E);
        }
        for (int64_t e0 = 0; e0 < Ev; e0 += kPackN) {
          const int64_t w = std::min(kPackN, Ev - e0);
          for (int64_t j = 0; j < S2; ++j) {
            scalar_t* dst = vbuf + j * kPackN;
            if (j < S) std::copy(v_head + j * P.v_ss + e0, v_head + j * P.v_ss + e0 + w, dst);
            std::fill(dst + (j < S ? w : 0), dst + kPackN, scalar_t(0));
          }
          cpublas::pack(S2, kPackN, kPackN, kPackN, dt, dt, vbuf, vpack + e0 * S2);
        }
      }
      std::fill(m_run, m_run + nq, ninf);
      std::fill(l_run, l_run + nq, 0.f);
      std::fill(o, o + nq * ldo, 0.f);
      for (int64_t k0 = 0; k0 < kv_end; k0 += Bk) {
        const int64_t nk = std::min(Bk, kv_end - k0);
        const TileMask tm = classify_tile(P, b, h, q0, nq, k0, nk);
        if (tm == TileMask::kClosed) continue;
        const bool masked = tm == TileMask::kMixed;
        for (int64_t c = 0; c < nk; c += kPackN)
          cpublas::brgemm(nq, kPackN, E, P.q_sl, kPackN, lds, false, qa, kpack + (k0 + c) * E,
                          s + c, true);
        const int64_t nk2 = round_up(nk, 2);
        const bool causal_cut = P.causal && k0 + nk - 1 > q0;
        for (int64_t r = 0; r < nq; ++r) {
          const int64_t i = q0 + r;
          float* srow = s + r * lds;
          const int64_t n = causal_cut ? std::clamp<int64_t>(i + 1 - k0, 0, nk) : nk;
          const bool fold = !masked && P.scale > 0.f;
          float mx;
          if (fold) {
            mx = P.scale * max16(srow, n);
          } else {
            mx = scale_and_max(srow, n, P.scale);
            if (masked) {
              mask_score_row(P, b, h, i, k0, n, srow);
              mx = max16(srow, n);
            }
          }
          const auto step = am::online_softmax_step(m_run[r], mx);
          const float sum = exp_sum16(srow, n, fold ? P.scale : 1.f, am::softmax_shift(step.m_new));
          std::fill(srow + n, srow + nk2, 0.f);
          l_run[r] = l_run[r] * step.rescale + sum;
          m_run[r] = step.m_new;
          float* orow = o + r * ldo;
          if (step.rescale != 1.f) {
#pragma omp simd
            for (int64_t e = 0; e < Ev; ++e) orow[e] *= step.rescale;
          }
          if (dropout) apply_dropout_row(P, P.dropout_row(b, h, i), k0, nk, srow);
          round_row(srow, pb + r * ldp, nk2);
        }
        for (int64_t e0 = 0; e0 < Ev; e0 += kPackN)
          cpublas::brgemm(nq, kPackN, nk2, ldp, kPackN, ldo, true, pb, vpack + e0 * S2 + k0 * kPackN,
                          o + e0, true);
      }
      for (int64_t r = 0; r < nq; ++r) {
        const int64_t row = (b * P.Hq + h) * L + q0 + r;
        const float inv = am::inverse_row_sum(l_run[r]);
        scalar_t* dst = out + P.out_rows.at(b, h, q0 + r);
        const float* src = o + r * ldo;
        for (int64_t e = 0; e < Ev; ++e) dst[e] = static_cast<scalar_t>(src[e] * inv);
        lse[row] = am::row_logsumexp(m_run[r], l_run[r]);
      }
    }
    cpublas::brgemm_release(true);
  });
}

// Whether oneDNN packs dt on this CPU (AMX / AVX-512 VNNI): probed once.
bool reduced_brgemm_available(at::ScalarType dt) {
  static const bool bf16 = brgemm_available() && cpublas::could_pack(at::kBFloat16);
  static const bool f16 = brgemm_available() && cpublas::could_pack(at::kHalf);
  return dt == at::kBFloat16 ? bf16 : f16;
}

template <>
bool try_forward_brgemm<c10::BFloat16>(const Problem<c10::BFloat16>& P, c10::BFloat16* out, float* lse) {
  if (P.L < kMinRowsToPack || P.E % 2 != 0 || !P.brgemm || !reduced_brgemm_available(at::kBFloat16)) return false;
  forward_brgemm_reduced(P, out, lse);
  return true;
}

// The [B, H, N, D] rows of a strided scalar_t tensor as a contiguous float32 tensor (exact):
// as_acc's conversion, one (batch, head) slab per step.
template <typename scalar_t>
at::Tensor float_copy(const scalar_t* src, int64_t B, int64_t H, int64_t N, int64_t D, int64_t sb,
                      int64_t sh, int64_t sn) {
  at::Tensor t = at::empty({B, H, N, D}, at::TensorOptions().dtype(at::kFloat));
  float* const dst = t.data_ptr<float>();
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    int64_t ld;
    for (int64_t bh = begin; bh < end; ++bh)
      as_acc(src + bh / H * sb + bh % H * sh, N, D, sn, dst + bh * N * D, ld);
  });
  return t;
}

// float16 where oneDNN cannot pack it (no AMX-FP16: Sapphire Rapids, AVX-512 without it):
// forward_brgemm on float32 copies of q, k and v (the conversions are exact; the products
// then accumulate in float32 as the packed path's do, and P V keeps P in float32 rather than
// rounding it to float16), written back to out rounded once. Measured on a 2-core Xeon with
// AVX512-FP16 but no AMX-FP16, B=2 H=8 L=S=512 D=64: the tile_gemm path it replaces ran
// 0.61x torch's float16 flash kernel. An additive float16 mask would need a float32 copy too
// and keeps the tile path.
void forward_half_as_float(const Problem<c10::Half>& P, c10::Half* out, float* lse) {
  const at::Tensor q = float_copy(P.q, P.B, P.Hq, P.L, P.E, P.q_sb, P.q_sh, P.q_sl);
  const at::Tensor k = float_copy(P.k, P.B, P.Hk, P.S, P.E, P.k_sb, P.k_sh, P.k_ss);
  const at::Tensor v = float_copy(P.v, P.B, P.Hk, P.S, P.Ev, P.v_sb, P.v_sh, P.v_ss);
  at::Tensor o = at::empty({P.B, P.Hq, P.L, P.Ev}, at::TensorOptions().dtype(at::kFloat));
  attn::Params f = static_cast<const attn::Params&>(P);
  f.dtype = attn::Dtype::kFloat32;
  f.q = q.const_data_ptr(), f.k = k.const_data_ptr(), f.v = v.const_data_ptr();
  f.q_sb = P.Hq * P.L * P.E, f.q_sh = P.L * P.E, f.q_sl = P.E;
  f.k_sb = P.Hk * P.S * P.E, f.k_sh = P.S * P.E, f.k_ss = P.E;
  f.v_sb = P.Hk * P.S * P.Ev, f.v_sh = P.S * P.Ev, f.v_ss = P.Ev;
  f.out_rows = {P.Hq * P.L * P.Ev, P.L * P.Ev, P.Ev};
  forward_brgemm(Problem<float>(f), o.data_ptr<float>(), lse);
  const float* const src = o.const_data_ptr<float>();
  at::parallel_for(0, P.B * P.Hq * P.L, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t i = r % P.L, bh = r / P.L, h = bh % P.Hq, b = bh / P.Hq;
      c10::Half* d = out + P.out_rows.at(b, h, i);
      for (int64_t e = 0; e < P.Ev; ++e) d[e] = static_cast<c10::Half>(src[r * P.Ev + e]);
    }
  });
}

template <>
bool try_forward_brgemm<c10::Half>(const Problem<c10::Half>& P, c10::Half* out, float* lse) {
  if (P.L < kMinRowsToPack || !P.brgemm) return false;
  if (reduced_brgemm_available(at::kHalf)) {
    if (P.E % 2 != 0) return false;
    forward_brgemm_reduced(P, out, lse);
    return true;
  }
  if (P.mask_kind == MaskKind::kAdditive) return false;
  forward_half_as_float(P, out, lse);
  return true;
}


// ---------------------------------------------------------------------------------------------
// Forward. One task = one (batch, head, query tile); each keeps its tile's running max, sum
// and output accumulator while it streams the key/value tiles (online softmax).

template <typename scalar_t>
void forward_kernel(const Problem<scalar_t>& P, scalar_t* out, acc_type<scalar_t>* lse,
                    scalar_t* weights) {
  using acc_t = acc_type<scalar_t>;
  constexpr bool kConvert = !std::is_same_v<scalar_t, acc_t>;
  const int64_t L = P.L, S = P.S, E = P.E, Ev = P.Ev;
  const int64_t Bq = std::min(P.tune.block_q, L), Bk = std::max<int64_t>(1, std::min(P.tune.block_k, S));
  const int64_t n_q_tiles = (L + Bq - 1) / Bq;
  const bool dropout = P.dropout_p > 0.f;
  const acc_t ninf = -std::numeric_limits<acc_t>::infinity();

  // Per-thread tiles; with weights the scores of whole rows are kept (they are an output).
  const ThreadScratch<acc_t> scratch({Bq * (weights ? std::max<int64_t>(S, 1) : Bk), Bq * Ev, Bq,
                                      Bq, kConvert ? Bq * E : 0, kConvert ? Bk * E : 0,
                                      kConvert ? Bk * Ev : 0, P.tile_gemm ? Bk * E : 0});
  at::parallel_for(0, P.B * P.Hq * n_q_tiles, 1, [&](int64_t begin, int64_t end) {
    acc_t* const scores = scratch.get(0);
    acc_t* const acc_out = scratch.get(1);
    acc_t* const m_run = scratch.get(2);
    acc_t* const l_run = scratch.get(3);
    acc_t* const q_buf = scratch.get(4);
    acc_t* const k_buf = scratch.get(5);
    acc_t* const v_buf = scratch.get(6);
    acc_t* const kt_buf = scratch.get(7);
    for (int64_t task = begin; task < end; ++task) {
      const auto [bh, b, h, hk, q0, nq, kv_end, q_tile, k_head, v_head] = QueryTile<scalar_t>(P, task, n_q_tiles, Bq);
      int64_t ldq, ldk, ldv;
      const acc_t* qa = as_acc(q_tile, nq, E, P.q_sl, q_buf, ldq);
      acc_t* s = scores;
      acc_t* o = acc_out;
      std::fill(o, o + nq * Ev, acc_t(0));

      if (weights == nullptr) {
        std::fill(m_run, m_run + nq, ninf);
        std::fill(l_run, l_run + nq, acc_t(0));
        for (int64_t k0 = 0; k0 < kv_end; k0 += Bk) {
          const int64_t nk = std::min(Bk, kv_end - k0);
          const acc_t* ka = as_acc(k_head + k0 * P.k_ss, nk, E, P.k_ss, k_buf, ldk);
          const acc_t* va = as_acc(v_head + k0 * P.v_ss, nk, Ev, P.v_ss, v_buf, ldv);
          const acc_t* kt = pack_transposed(P.tile_gemm, ka, nk, E, ldk, kt_buf, nq);
          tile_product<acc_t>(P.tile_gemm, false, true, nq, nk, E, P.scale, qa, ldq, ka, ldk, kt, 0, s, nk);
          for (int64_t r = 0; r < nq; ++r) {
            acc_t* srow = s + r * nk;
            mask_score_row(P, b, h, q0 + r, k0, nk, srow);
            const auto step = am::online_softmax_step(m_run[r], row_max(srow, nk));
            const acc_t sum = exp_and_sum(srow, nk, am::softmax_shift(step.m_new));
            l_run[r] = l_run[r] * step.rescale + sum;
            m_run[r] = step.m_new;
            if (step.rescale != acc_t(1)) {
              acc_t* orow = o + r * Ev;
#pragma omp simd
              for (int64_t e = 0; e < Ev; ++e) orow[e] *= step.rescale;
            }
            if (dropout) apply_dropout_row(P, P.dropout_row(b, h, q0 + r), k0, nk, srow);
          }
          tile_product<acc_t>(P.tile_gemm, false, false, nq, Ev, nk, 1, s, nk, va, ldv, nullptr, 1, o, Ev);
        }
      } else {
        // Weights wanted: the rows are materialised anyway (they are the output), so the exact
        // two-step softmax is cheaper than rescaling.
        const int64_t lds = std::max<int64_t>(S, 1);
        for (int64_t k0 = 0; k0 < kv_end; k0 += Bk) {
          const int64_t nk = std::min(Bk, kv_end - k0);
          const acc_t* ka = as_acc(k_head + k0 * P.k_ss, nk, E, P.k_ss, k_buf, ldk);
          const acc_t* kt = pack_transposed(P.tile_gemm, ka, nk, E, ldk, kt_buf, nq);
          tile_product<acc_t>(P.tile_gemm, false, true, nq, nk, E, P.scale, qa, ldq, ka, ldk, kt, 0, s + k0, lds);
        }
        for (int64_t r = 0; r < nq; ++r) {
          const int64_t i = q0 + r;
          acc_t* srow = s + r * lds;
          mask_score_row(P, b, h, i, 0, kv_end, srow);
          const acc_t m = row_max(srow, kv_end);
          const acc_t sum = exp_and_sum(srow, kv_end, am::softmax_shift(m));
          const acc_t inv = am::inverse_row_sum(sum);
#pragma omp simd
          for (int64_t j = 0; j < kv_end; ++j) srow[j] *= inv;
          std::fill(srow + kv_end, srow + S, acc_t(0));
          if (dropout) apply_dropout_row(P, P.dropout_row(b, h, i), 0, kv_end, srow);
          m_run[r] = m;
          l_run[r] = sum;
          scalar_t* wrow = weights + ((b * P.Hq + h) * L + i) * S;
          for (int64_t j = 0; j < S; ++j) wrow[j] = static_cast<scalar_t>(srow[j]);
        }
        for (int64_t k0 = 0; k0 < kv_end; k0 += Bk) {
          const int64_t nk = std::min(Bk, kv_end - k0);
          const acc_t* va = as_acc(v_head + k0 * P.v_ss, nk, Ev, P.v_ss, v_buf, ldv);
          tile_product<acc_t>(P.tile_gemm, false, false, nq, Ev, nk, 1, s + k0, lds, va, ldv, nullptr, 1, o, Ev);
        }
      }

      for (int64_t r = 0; r < nq; ++r) {
        const int64_t row = (b * P.Hq + h) * L + q0 + r;
        const acc_t inv = weights ? acc_t(1) : am::inverse_row_sum(l_run[r]);
        scalar_t* dst = out + P.out_rows.at(b, h, q0 + r);
        const acc_t* src = o + r * Ev;
        for (int64_t e = 0; e < Ev; ++e) dst[e] = static_cast<scalar_t>(src[e] * inv);
        lse[row] = am::row_logsumexp(m_run[r], l_run[r]);
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Backward. One task = one (batch, key head): it owns dK and dV of its head (summed over the
// query heads that share it under GQA), streams key tiles and, for each, every query tile
// that can see it, recomputing P = exp(scale * Q K^T + mask - lse).

// attn::BackwardBuffers at one element type (lse and dmask in the accumulation type).
template <typename scalar_t>
struct BackwardIO {
  using acc_t = acc_type<scalar_t>;
  explicit BackwardIO(const attn::BackwardBuffers& b)
      : grad_out(static_cast<const scalar_t*>(b.grad_out)),
        out(static_cast<const scalar_t*>(b.out)),
        lse(static_cast<const acc_t*>(b.lse)),
        weights(static_cast<const scalar_t*>(b.weights)),
        grad_weights(static_cast<const scalar_t*>(b.grad_weights)),
        dq(static_cast<scalar_t*>(b.dq)),
        dk(static_cast<scalar_t*>(b.dk)),
        dv(static_cast<scalar_t*>(b.dv)),
        dmask(static_cast<acc_t*>(b.dmask)) {}
  const scalar_t* grad_out;
  const scalar_t* out;
  const acc_t* lse;
  const scalar_t* weights;       // null without grad_weights
  const scalar_t* grad_weights;
  scalar_t* dq;
  scalar_t* dk;
  scalar_t* dv;
  acc_t* dmask;                  // null without a mask gradient
};

template <typename scalar_t>
void backward_kernel(const Problem<scalar_t>& P, const BackwardIO<scalar_t>& io) {
  using acc_t = acc_type<scalar_t>;
  constexpr bool kConvert = !std::is_same_v<scalar_t, acc_t>;
  const int64_t L = P.L, S = P.S, E = P.E, Ev = P.Ev, G = P.group;
  const int64_t Bq = std::max<int64_t>(1, std::min(P.tune.block_q_bwd, L));
  const int64_t Bk = std::max<int64_t>(1, std::min<int64_t>(P.tune.block_k_bwd, S));
  const bool dropout = P.dropout_p > 0.f;

  // A task is one (batch, key head) unit, or a share of its key tiles when there are fewer
  // units than threads: then each share sums dQ into its own partial buffer (reduced at the
  // end), so that every thread has work. dK and dV of a key tile have a single owner.
  const int64_t units = P.B * P.Hk;
  const int64_t n_kv_tiles = (S + Bk - 1) / Bk;
  const int64_t threads = at::get_num_threads();
  const int64_t splits =
      units >= threads ? 1 : std::max<int64_t>(1, std::min(n_kv_tiles, (threads + units - 1) / units));
  const int64_t tiles_per_split = splits > 1 ? (n_kv_tiles + splits - 1) / splits : n_kv_tiles;
  const int64_t dq_per_unit = G * L * E;
  at::Tensor dq_partial;
  if (splits > 1)
    dq_partial = at::empty({splits, units, dq_per_unit},
                           at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value));

  // dQ of the task's query heads is accumulated whole (G x L x E): O(L) per head.
  const ThreadScratch<acc_t> scratch({G * L, splits > 1 ? 0 : dq_per_unit, Bk * E, Bk * Ev,
                                      Bq * Bk, Bq * Bk, dropout ? Bq * Bk : 0,
                                      kConvert ? G * L * E : 0, kConvert ? G * L * Ev : 0,
                                      kConvert ? Bk * E : 0, kConvert ? Bk * Ev : 0,
                                      P.tile_gemm ? Bk * E : 0, P.tile_gemm ? Bk * Ev : 0});
  at::parallel_for(0, units * splits, 1, [&](int64_t begin, int64_t end) {
    acc_t* const d_row = scratch.get(0);
    acc_t* const dq_scratch = scratch.get(1);
    acc_t* const dk_acc = scratch.get(2);
    acc_t* const dv_acc = scratch.get(3);
    acc_t* const p_tile = scratch.get(4);
    acc_t* const dp_tile = scratch.get(5);
    acc_t* const pd_tile = scratch.get(6);
    acc_t* const q_full = scratch.get(7);
    acc_t* const do_full = scratch.get(8);
    acc_t* const k_buf = scratch.get(9);
    acc_t* const v_buf = scratch.get(10);
    acc_t* const kt_buf = scratch.get(11);
    acc_t* const vt_buf = scratch.get(12);
    std::vector<const acc_t*> q_heads(G), do_heads(G);
    std::vector<int64_t> q_ld(G), do_ld(G);

    for (int64_t task = begin; task < end; ++task) {
      const int64_t unit = task / splits, split = task % splits;
      const int64_t b = unit / P.Hk, hk = unit % P.Hk;
      acc_t* const dq_acc = splits > 1
                                ? dq_partial.data_ptr<acc_t>() + (split * units + unit) * dq_per_unit
                                : dq_scratch;
      const int64_t k_begin = split * tiles_per_split * Bk;
      const int64_t k_end = std::min(S, (split + 1) * tiles_per_split * Bk);
      for (int64_t g = 0; g < G; ++g) {
        const int64_t h = hk * G + g, bh = b * P.Hq + h;
        q_heads[g] = as_acc(P.q + b * P.q_sb + h * P.q_sh, L, E, P.q_sl,
                            kConvert ? q_full + g * L * E : nullptr, q_ld[g]);
        do_heads[g] = as_acc(io.grad_out + P.grad_out_rows.at(b, h, 0), L, Ev, P.grad_out_rows.sl,
                             kConvert ? do_full + g * L * Ev : nullptr, do_ld[g]);
        // D = rowsum(dO * O) (+ rowsum(W * dW)): the softmax backward's per-row constant.
        for (int64_t i = 0; i < L; ++i) {
          const scalar_t* orow = io.out + P.out_rows.at(b, h, i);
          const acc_t* dorow = do_heads[g] + i * do_ld[g];
          acc_t d = 0;
          for (int64_t e = 0; e < Ev; ++e) d += dorow[e] * static_cast<acc_t>(orow[e]);
          if (io.grad_weights) {
            const scalar_t* w = io.weights + (bh * L + i) * S;
            const scalar_t* dw = io.grad_weights + (bh * L + i) * S;
            for (int64_t j = 0; j < S; ++j) d += static_cast<acc_t>(w[j]) * static_cast<acc_t>(dw[j]);
          }
          d_row[g * L + i] = d;
        }
      }
      std::fill(dq_acc, dq_acc + G * L * E, acc_t(0));
      const scalar_t* k_head = P.k + b * P.k_sb + hk * P.k_sh;
      const scalar_t* v_head = P.v + b * P.v_sb + hk * P.v_sh;

      for (int64_t k0 = k_begin; k0 < k_end; k0 += Bk) {
        const int64_t nk = std::min(Bk, k_end - k0);
        int64_t ldk, ldv;
        const acc_t* ka = as_acc(k_head + k0 * P.k_ss, nk, E, P.k_ss, k_buf, ldk);
        const acc_t* va = as_acc(v_head + k0 * P.v_ss, nk, Ev, P.v_ss, v_buf, ldv);
        const acc_t* kt = pack_transposed(P.tile_gemm, ka, nk, E, ldk, kt_buf, G * L);
        const acc_t* vt = pack_transposed(P.tile_gemm, va, nk, Ev, ldv, vt_buf, G * L);
        std::fill(dk_acc, dk_acc + nk * E, acc_t(0));
        std::fill(dv_acc, dv_acc + nk * Ev, acc_t(0));
        // Under causal, rows before k0 see none of these keys.
        const int64_t q_begin = P.causal ? (k0 / Bq) * Bq : 0;
        for (int64_t g = 0; g < G; ++g) {
          const int64_t h = hk * G + g, bh = b * P.Hq + h;
          for (int64_t q0 = q_begin; q0 < L; q0 += Bq) {
            const int64_t nq = std::min(Bq, L - q0);
            const acc_t* qa = q_heads[g] + q0 * q_ld[g];
            const acc_t* doa = do_heads[g] + q0 * do_ld[g];
            acc_t* p = p_tile;
            acc_t* dp = dp_tile;
            tile_product<acc_t>(P.tile_gemm, false, true, nq, nk, E, P.scale, qa, q_ld[g], ka, ldk, kt, 0, p, nk);
            for (int64_t r = 0; r < nq; ++r) {
              acc_t* prow = p + r * nk;
              mask_score_row(P, b, h, q0 + r, k0, nk, prow);
              const acc_t l = io.lse[bh * L + q0 + r];
#pragma omp simd
              for (int64_t j = 0; j < nk; ++j) prow[j] = am::prob_from_lse(prow[j], l);
            }
            const acc_t* pv = p;  // the probabilities that multiplied V in the forward
            if (dropout) {
              std::copy(p, p + nq * nk, pd_tile);
              for (int64_t r = 0; r < nq; ++r)
                apply_dropout_row(P, P.dropout_row(b, h, q0 + r), k0, nk, pd_tile + r * nk);
              pv = pd_tile;
            }
            // dV += Pd^T dO ; dP = dO V^T
            tile_product<acc_t>(P.tile_gemm, true, false, nk, Ev, nq, 1, pv, nk, doa, do_ld[g], nullptr, 1,
                                 dv_acc, Ev);
            tile_product<acc_t>(P.tile_gemm, false, true, nq, nk, Ev, 1, doa, do_ld[g], va, ldv, vt, 0, dp, nk);
            for (int64_t r = 0; r < nq; ++r) {
              const int64_t i = q0 + r;
              acc_t* dprow = dp + r * nk;
              const acc_t* prow = p + r * nk;
              if (io.grad_weights) {
                const scalar_t* dw = io.grad_weights + (bh * L + i) * S + k0;
                for (int64_t j = 0; j < nk; ++j) dprow[j] += static_cast<acc_t>(dw[j]);
              }
              if (dropout) apply_dropout_row(P, P.dropout_row(b, h, i), k0, nk, dprow);
              const acc_t d = d_row[g * L + i];
#pragma omp simd
              for (int64_t j = 0; j < nk; ++j) dprow[j] = am::softmax_grad(prow[j], dprow[j], d);
              if (io.dmask) std::memcpy(io.dmask + (bh * L + i) * S + k0, dprow, nk * sizeof(acc_t));
            }
            // dQ += scale dS K ; dK += scale dS^T Q
            tile_product<acc_t>(P.tile_gemm, false, false, nq, E, nk, P.scale, dp, nk, ka, ldk, nullptr, 1,
                                 dq_acc + (g * L + q0) * E, E);
            tile_product<acc_t>(P.tile_gemm, true, false, nk, E, nq, P.scale, dp, nk, qa, q_ld[g], nullptr, 1,
                                 dk_acc, E);
          }
        }
        scalar_t* dk_dst = io.dk + ((b * P.Hk + hk) * S + k0) * E;
        scalar_t* dv_dst = io.dv + ((b * P.Hk + hk) * S + k0) * Ev;
        for (int64_t x = 0; x < nk * E; ++x) dk_dst[x] = static_cast<scalar_t>(dk_acc[x]);
        for (int64_t x = 0; x < nk * Ev; ++x) dv_dst[x] = static_cast<scalar_t>(dv_acc[x]);
      }
      if (splits == 1) {
        // A unit's query heads are consecutive: its dQ is one contiguous G x L x E block.
        scalar_t* dq_dst = io.dq + unit * dq_per_unit;
        for (int64_t x = 0; x < dq_per_unit; ++x) dq_dst[x] = static_cast<scalar_t>(dq_acc[x]);
      }
    }
  });
  if (splits > 1) {
    const acc_t* partial = dq_partial.const_data_ptr<acc_t>();
    const int64_t n = units * dq_per_unit;
    at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t x = begin; x < end; ++x) {
        acc_t sum = 0;
        for (int64_t sp = 0; sp < splits; ++sp) sum += partial[sp * n + x];
        io.dq[x] = static_cast<scalar_t>(sum);
      }
    });
  }
}

// float32 backward through brgemm: the same tasks and formulas as backward_kernel, with every
// tile product in brgemm's row-major C (+)= A B form. Per (batch, key head) unit, Q^T and dO^T
// of its query heads are transposed once (and D computed once: consecutive splits of a unit
// on one thread reuse them); K^T and V^T once per key tile (TransposedRows, as the forward's). dK and dV accumulate
// transposed (dK^T += Q^T dS, dV^T += dO^T P: both operands as they are) and are transposed
// back when the key tile is done; dS carries the scale.
void backward_brgemm(const Problem<float>& P, const BackwardIO<float>& io) {
  const int64_t L = P.L, S = P.S, E = P.E, Ev = P.Ev, G = P.group;
  const int64_t Bq = std::max<int64_t>(1, std::min(P.tune.br_block_q_bwd, L));
  const int64_t Bk = std::max<int64_t>(1, std::min<int64_t>(br_block_k_bwd(P.tune, P.causal), S));
  const int64_t ldk = padded_ld(Bk), ldl = padded_ld(L);
  const int64_t do_ld = P.grad_out_rows.sl;  // dO's row stride
  const bool dropout = P.dropout_p > 0.f;
  const float scale = P.scale;

  const int64_t units = P.B * P.Hk;
  const int64_t n_kv_tiles = (S + Bk - 1) / Bk;
  const int64_t threads = at::get_num_threads();
  const int64_t splits =
      units >= threads ? 1 : std::max<int64_t>(1, std::min(n_kv_tiles, (threads + units - 1) / units));
  const int64_t tiles_per_split = splits > 1 ? (n_kv_tiles + splits - 1) / splits : n_kv_tiles;
  const int64_t dq_per_unit = G * L * E;
  at::Tensor dq_partial;
  if (splits > 1) dq_partial = at::empty({splits, units, dq_per_unit}, at::TensorOptions().dtype(at::kFloat));

  const ThreadScratch<float> scratch({G * L, splits > 1 ? 0 : dq_per_unit, G * E * ldl,
                                      G * Ev * ldl, E * ldk, Ev * ldk, E * ldk, Ev * ldk,
                                      Bq * ldk, Bq * ldk, dropout ? Bq * ldk : 0});
  at::parallel_for(0, units * splits, 1, [&](int64_t begin, int64_t end) {
    float* const d_row = scratch.get(0);
    float* const dq_scratch = scratch.get(1);
    float* const qt_all = scratch.get(2);
    float* const dot_all = scratch.get(3);
    TransposedRows k_t(scratch.get(4), ldk, Bk), v_t(scratch.get(5), ldk, Bk);
    int64_t prepared_unit = -1;  // whose Q^T, dO^T and D the scratch holds
    float* const dkt = scratch.get(6);
    float* const dvt = scratch.get(7);
    float* const p = scratch.get(8);
    float* const dp = scratch.get(9);
    float* const pd = scratch.get(10);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t unit = task / splits, split = task % splits;
      const int64_t b = unit / P.Hk, hk = unit % P.Hk;
      float* const dq_acc = splits > 1 ? dq_partial.data_ptr<float>() + (split * units + unit) * dq_per_unit
                                       : dq_scratch;
      const int64_t k_begin = split * tiles_per_split * Bk;
      const int64_t k_end = std::min(S, (split + 1) * tiles_per_split * Bk);
      for (int64_t g = 0; g < G && unit != prepared_unit; ++g) {
        const int64_t h = hk * G + g, bh = b * P.Hq + h;
        const float* qh = P.q + b * P.q_sb + h * P.q_sh;
        const float* doh = io.grad_out + P.grad_out_rows.at(b, h, 0);
        tile_gemm::transpose<float>(L, E, qh, P.q_sl, qt_all + g * E * ldl, ldl);
        tile_gemm::transpose<float>(L, Ev, doh, do_ld, dot_all + g * Ev * ldl, ldl);
        for (int64_t i = 0; i < L; ++i) {
          const float* orow = io.out + P.out_rows.at(b, h, i);
          const float* dorow = doh + i * do_ld;
          float d = 0;
#pragma omp simd reduction(+ : d)
          for (int64_t e = 0; e < Ev; ++e) d += dorow[e] * orow[e];
          if (io.grad_weights) {
            const float* w = io.weights + (bh * L + i) * S;
            const float* dw = io.grad_weights + (bh * L + i) * S;
            for (int64_t j = 0; j < S; ++j) d += w[j] * dw[j];
          }
          d_row[g * L + i] = d;
        }
      }
      prepared_unit = unit;
      std::fill(dq_acc, dq_acc + G * L * E, 0.f);
      const float* k_head = P.k + b * P.k_sb + hk * P.k_sh;
      const float* v_head = P.v + b * P.v_sb + hk * P.v_sh;

      for (int64_t k0 = k_begin; k0 < k_end; k0 += Bk) {
        const int64_t nk = std::min(Bk, k_end - k0);
        const float* ka = k_head + k0 * P.k_ss;
        const float* kt = k_t.get(unit, k_head, P.k_ss, E, k0, k0 + nk);
        const float* vt = v_t.get(unit, v_head, P.v_ss, Ev, k0, k0 + nk);
        bool first = true;  // dK^T, dV^T not yet written for this key tile
        const int64_t q_begin = P.causal ? (k0 / Bq) * Bq : 0;
        for (int64_t g = 0; g < G; ++g) {
          const int64_t h = hk * G + g, bh = b * P.Hq + h;
          const float* qh = P.q + b * P.q_sb + h * P.q_sh;
          const float* doh = io.grad_out + P.grad_out_rows.at(b, h, 0);
          for (int64_t q0 = q_begin; q0 < L; q0 += Bq) {
            const int64_t nq = std::min(Bq, L - q0);
            const TileMask tm = classify_tile(P, b, h, q0, nq, k0, nk);
            if (tm == TileMask::kClosed) continue;
            const bool masked = tm == TileMask::kMixed;
            cpublas::brgemm(nq, nk, E, P.q_sl, ldk, ldk, false, qh + q0 * P.q_sl, kt, p, false);
            const bool causal_cut = P.causal && k0 + nk - 1 > q0;
            for (int64_t r = 0; r < nq; ++r) {
              const int64_t i = q0 + r;
              float* prow = p + r * ldk;
              const int64_t n = causal_cut ? std::clamp<int64_t>(i + 1 - k0, 0, nk) : nk;
              const float l = io.lse[bh * L + i];
              if (!masked) {
                exp_sum16(prow, n, scale, l);
              } else {
#pragma omp simd
                for (int64_t j = 0; j < n; ++j) prow[j] *= scale;
                mask_score_row(P, b, h, i, k0, n, prow);
                exp_sum16(prow, n, 1.f, l);
              }
              std::fill(prow + n, prow + nk, 0.f);
            }
            const float* pv = p;
            if (dropout) {
              for (int64_t r = 0; r < nq; ++r) {
                std::copy(p + r * ldk, p + r * ldk + nk, pd + r * ldk);
                apply_dropout_row(P, P.dropout_row(b, h, q0 + r), k0, nk, pd + r * ldk);
              }
              pv = pd;
            }
            // dV^T += dO^T Pd ; dP = dO V^T
            cpublas::brgemm(Ev, nk, nq, ldl, ldk, ldk, !first, dot_all + g * Ev * ldl + q0, pv,
                            dvt, false);
            cpublas::brgemm(nq, nk, Ev, do_ld, ldk, ldk, false, doh + q0 * do_ld, vt, dp, false);
            for (int64_t r = 0; r < nq; ++r) {
              const int64_t i = q0 + r;
              float* dprow = dp + r * ldk;
              const float* prow = p + r * ldk;
              if (io.grad_weights) {
                const float* dw = io.grad_weights + (bh * L + i) * S + k0;
                for (int64_t j = 0; j < nk; ++j) dprow[j] += dw[j];
              }
              if (dropout) apply_dropout_row(P, P.dropout_row(b, h, i), k0, nk, dprow);
              const float d = d_row[g * L + i];
              if (io.dmask) {
                float* dm = io.dmask + (bh * L + i) * S + k0;
#pragma omp simd
                for (int64_t j = 0; j < nk; ++j) {
                  const float ds = am::softmax_grad(prow[j], dprow[j], d);
                  dm[j] = ds;
                  dprow[j] = ds * scale;
                }
              } else {
#pragma omp simd
                for (int64_t j = 0; j < nk; ++j) dprow[j] = am::softmax_grad(prow[j], dprow[j], d) * scale;
              }
            }
            // dQ += dS K ; dK^T += Q^T dS  (dS already scaled)
            cpublas::brgemm(nq, E, nk, ldk, P.k_ss, E, true, dp, ka, dq_acc + (g * L + q0) * E, false);
            cpublas::brgemm(E, nk, nq, ldl, ldk, ldk, !first, qt_all + g * E * ldl + q0, dp, dkt, false);
            first = false;
          }
        }
        float* dk_dst = io.dk + ((b * P.Hk + hk) * S + k0) * E;
        float* dv_dst = io.dv + ((b * P.Hk + hk) * S + k0) * Ev;
        if (first) {  // no query row sees these keys
          std::fill(dk_dst, dk_dst + nk * E, 0.f);
          std::fill(dv_dst, dv_dst + nk * Ev, 0.f);
        } else {
          tile_gemm::transpose<float>(E, nk, dkt, ldk, dk_dst, E);
          tile_gemm::transpose<float>(Ev, nk, dvt, ldk, dv_dst, Ev);
        }
      }
      if (splits == 1) std::copy(dq_acc, dq_acc + dq_per_unit, io.dq + unit * dq_per_unit);
    }
    cpublas::brgemm_release(false);
  });
  if (splits > 1) {
    const float* partial = dq_partial.const_data_ptr<float>();
    const int64_t n = units * dq_per_unit;
    at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t x = begin; x < end; ++x) {
        float sum = 0;
        for (int64_t sp = 0; sp < splits; ++sp) sum += partial[sp * n + x];
        io.dq[x] = sum;
      }
    });
  }
}

template <typename scalar_t>
bool try_backward_brgemm(const Problem<scalar_t>&, const BackwardIO<scalar_t>&) {
  return false;
}
template <>
bool try_backward_brgemm<float>(const Problem<float>& P, const BackwardIO<float>& io) {
  if (!P.brgemm || P.L < kMinRowsToPack) return false;
  backward_brgemm(P, io);
  return true;
}

// ---------------------------------------------------------------------------------------------

template <typename scalar_t>
Problem<scalar_t>::Problem(const attn::Params& p)
    : attn::Params(p),
      q(static_cast<const scalar_t*>(p.q)),
      k(static_cast<const scalar_t*>(p.k)),
      v(static_cast<const scalar_t*>(p.v)),
      mask_bool(p.mask_kind == MaskKind::kBool ? static_cast<const uint8_t*>(p.mask) : nullptr),
      mask_add(p.mask_kind == MaskKind::kAdditive ? static_cast<const scalar_t*>(p.mask) : nullptr),
      scale(static_cast<acc_t>(p.scale)),
      keep_scale(static_cast<acc_t>(p.keep_scale)),
      tune(attention_settings_snapshot()),  // once per call: a concurrent change waits for the next
      tile_gemm(kHaveTileGemm && tune.gemm != AttentionGemm::kBlas),
      brgemm(tune.gemm == AttentionGemm::kAuto && brgemm_available()) {}

// Runs f with the C++ element type of p.dtype.
template <typename F>
void by_dtype(attn::Dtype dtype, F&& f) {
  switch (dtype) {
    case attn::Dtype::kFloat32: return f(float{});
    case attn::Dtype::kFloat64: return f(double{});
    case attn::Dtype::kBFloat16: return f(c10::BFloat16{});
    case attn::Dtype::kFloat16: return f(c10::Half{});
  }
}

}  // namespace

bool attention_cpu_averages_weights(const attn::Params& params) {
  // Zero heads average to NaN as torch's mean does: that is left to the mean.
  return params.dtype == attn::Dtype::kFloat32 && params.L >= kMinRowsToPack && params.Hq > 0 &&
         Problem<float>(params).brgemm;
}

void attention_forward_cpu(const attn::Params& params, const attn::ForwardOutputs& o) {
  if (o.weights_averaged) {
    TORCH_CHECK(attention_cpu_averages_weights(params),
                "fastseq attention: head-averaged weights asked of a problem without that kernel");
    forward_brgemm_averaged_weights(Problem<float>(params), static_cast<float*>(o.out),
                                    static_cast<float*>(o.lse), static_cast<float*>(o.weights));
    return;
  }
  by_dtype(params.dtype, [&](auto zero) {
    using scalar_t = decltype(zero);
    using acc_t = acc_type<scalar_t>;
    const Problem<scalar_t> P(params);
    scalar_t* out = static_cast<scalar_t*>(o.out);
    acc_t* lse = static_cast<acc_t*>(o.lse);
    if (o.weights == nullptr && try_forward_brgemm(P, out, lse)) return;
    if constexpr (std::is_same_v<scalar_t, float>) {
      if (o.weights != nullptr && P.brgemm && P.L >= kMinRowsToPack) {
        forward_brgemm_weights(P, out, lse, static_cast<float*>(o.weights));
        return;
      }
    }
    forward_kernel<scalar_t>(P, out, lse, static_cast<scalar_t*>(o.weights));
  });
}

void attention_backward_cpu(const attn::Params& params, const attn::BackwardBuffers& b) {
  by_dtype(params.dtype, [&](auto zero) {
    using scalar_t = decltype(zero);
    const Problem<scalar_t> P(params);
    const BackwardIO<scalar_t> io(b);
    if (!try_backward_brgemm(P, io)) backward_kernel<scalar_t>(P, io);
  });
}

}  // namespace fastseq
