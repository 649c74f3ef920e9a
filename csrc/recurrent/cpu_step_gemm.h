// The register-blocked micro-kernel of the CPU sequence engine and the weight layouts it
// reads. acc[R][NV] (R rows of A, NV vectors of W columns) += A[R, K] B[K, NV*W], with B in
// panels of W columns ("k-slices": the W weights of one column block for one k are
// contiguous). The caller applies its epilogue (the gate math, or a store) to acc while it
// is still in registers. Include after common/cpu_vec.h.
#pragma once

#include <c10/macros/Macros.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace fastseq {
namespace recurrent {

template <class T>
using Vec = at::vec::Vectorized<T>;

// Accumulators that fit the register file with the NV weight vectors and one broadcast:
// 32 vector registers with AVX-512, 16 with AVX2 / NEON (the compiler spills otherwise).
#if defined(CPU_CAPABILITY_AVX512)
constexpr int kAccRegisters = 24;
#else
constexpr int kAccRegisters = 12;
#endif
constexpr int kMaxVectors = 4;
constexpr int kMaxRowsCap = 8;
constexpr int max_rows(int nv) { return std::min(kMaxRowsCap, kAccRegisters / nv); }

// Keeps a loaded weight vector in a register: otherwise the compiler folds the load into
// every row's FMA, multiplying the load traffic of the inner loop.
template <class V>
C10_ALWAYS_INLINE void pin_in_register(V& v) {
#if defined(__GNUC__) && defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<V, Vec<float>>) {
    __m512 raw = v;
    asm("" : "+v"(raw));
    v = V(raw);
  } else if constexpr (std::is_same_v<V, Vec<double>>) {
    __m512d raw = v;
    asm("" : "+v"(raw));
    v = V(raw);
  }
#elif defined(__GNUC__) && defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<V, Vec<float>>) {
    __m256 raw = v;
    asm("" : "+x"(raw));
    v = V(raw);
  } else if constexpr (std::is_same_v<V, Vec<double>>) {
    __m256d raw = v;
    asm("" : "+x"(raw));
    v = V(raw);
  }
#else
  (void)v;
#endif
}

// acc (+)= A[0:R, 0:K] (row stride lda) times the NV weight vectors b[v] + k * b_kstride.
template <int R, int NV, class T>
C10_ALWAYS_INLINE void accumulate(const T* a, int64_t lda, int64_t K, const T* const (&b)[NV],
                                  int64_t b_kstride, Vec<T> (&acc)[R][NV], bool zero) {
  using V = Vec<T>;
  if (zero)
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < NV; ++v) acc[r][v] = V(T(0));
  for (int64_t k = 0; k < K; ++k) {
    V w[NV];
    for (int v = 0; v < NV; ++v) {
      w[v] = V::loadu(b[v] + k * b_kstride);
      pin_in_register(w[v]);
    }
    for (int r = 0; r < R; ++r) {
      const V x(a[r * lda + k]);
      for (int v = 0; v < NV; ++v) acc[r][v] = at::vec::fmadd(x, w[v], acc[r][v]);
    }
  }
}

// Calls fn.template operator()<R, NV>() for runtime (rows, nv) in [1, max_rows(nv)] x [1, 4].
template <class Fn>
C10_ALWAYS_INLINE void dispatch_tile(int rows, int nv, Fn&& fn) {
#define FASTSEQ_TILE_ROWS(NV)                                                    \
  switch (std::min(rows, max_rows(NV))) {                                        \
    case 1: return fn.template operator()<std::min(1, max_rows(NV)), NV>();      \
    case 2: return fn.template operator()<std::min(2, max_rows(NV)), NV>();      \
    case 3: return fn.template operator()<std::min(3, max_rows(NV)), NV>();      \
    case 4: return fn.template operator()<std::min(4, max_rows(NV)), NV>();      \
    case 5: return fn.template operator()<std::min(5, max_rows(NV)), NV>();      \
    case 6: return fn.template operator()<std::min(6, max_rows(NV)), NV>();      \
    case 7: return fn.template operator()<std::min(7, max_rows(NV)), NV>();      \
    default: return fn.template operator()<std::min(8, max_rows(NV)), NV>();     \
  }
  switch (nv) {
    case 1: FASTSEQ_TILE_ROWS(1)
    case 2: FASTSEQ_TILE_ROWS(2)
    case 3: FASTSEQ_TILE_ROWS(3)
    default: FASTSEQ_TILE_ROWS(4)
  }
#undef FASTSEQ_TILE_ROWS
}

// Balanced row blocks of at most max_rows(nv): 8 rows with blocks of 6 -> 4 + 4, not 6 + 2,
// so every block reuses each loaded weight vector about equally often.
inline int64_t row_block(int64_t rows, int nv) {
  const int64_t cap = max_rows(nv), blocks = (rows + cap - 1) / cap;
  return blocks ? (rows + blocks - 1) / blocks : 0;
}

}  // namespace recurrent
}  // namespace fastseq
