// Register-blocked products of attention tiles on the CPU: C = alpha * A B + beta * C, with
// A read through any (row, col) strides (so A or A^T without a copy) and B row-major, in
// 64-byte vectors (GCC/Clang vector extensions: one zmm with AVX-512, two ymm with AVX2).
#pragma once

#include <cstdint>
#include <cstring>

namespace fastseq {
namespace tile_gemm {

template <typename T>
struct Vec {
  static constexpr int kLanes = 64 / sizeof(T);
  typedef T type __attribute__((vector_size(64)));
};

template <typename T>
inline typename Vec<T>::type load(const T* p) {
  typename Vec<T>::type v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
inline void store(T* p, typename Vec<T>::type v) {
  std::memcpy(p, &v, sizeof(v));
}

// C[0:MR, 0:NV*lanes] for the whole K: the accumulators stay in registers.
template <typename T, int MR, int NV>
inline void micro_kernel(int64_t K, T alpha, const T* A, int64_t a_row, int64_t a_col,
                         const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  using V = typename Vec<T>::type;
  constexpr int W = Vec<T>::kLanes;
  V acc[MR][NV];
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v) acc[m][v] = V{};
  for (int64_t k = 0; k < K; ++k) {
    V b[NV];
    for (int v = 0; v < NV; ++v) b[v] = load(B + k * ldb + v * W);
    const T* a = A + k * a_col;
    for (int m = 0; m < MR; ++m) {
      const T am = a[m * a_row];
      for (int v = 0; v < NV; ++v) acc[m][v] += am * b[v];
    }
  }
  for (int m = 0; m < MR; ++m) {
    for (int v = 0; v < NV; ++v) {
      T* c = C + m * ldc + v * W;
      V r = alpha * acc[m][v];
      if (beta != T(0)) r += beta * load(c);  // beta == 0 never reads C (it may be garbage)
      store(c, r);
    }
  }
}

constexpr int kRows = 8;  // MR: 8 rows x 2 vectors = 16 accumulators of 32 registers

template <typename T, int NV>
inline void row_blocks(int64_t M, int64_t K, T alpha, const T* A, int64_t a_row, int64_t a_col,
                       const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  int64_t m0 = 0;
  for (; m0 + kRows <= M; m0 += kRows)
    micro_kernel<T, kRows, NV>(K, alpha, A + m0 * a_row, a_row, a_col, B, ldb, beta,
                               C + m0 * ldc, ldc);
  const T* a = A + m0 * a_row;
  T* c = C + m0 * ldc;
  switch (M - m0) {
    case 7: micro_kernel<T, 7, NV>(K, alpha, a, a_row, a_col, B, ldb, beta, c, ldc); break;
    case 6: micro_kernel<T, 6, NV>(K, alpha, a, a_row, a_col, B, ldb, beta, c, ldc); break;
    case 5: micro_kernel<T, 5, NV>(K, alpha, a, a_row, a_col, B, ldb, beta, c, ldc); break;
    case 4: micro_kernel<T, 4, NV>(K, alpha, a, a_row, a_col, B, ldb, beta, c, ldc); break;
    case 3: micro_kernel<T, 3, NV>(K, alpha, a, a_row, a_col, B, ldb, beta, c, ldc); break;
    case 2: micro_kernel<T, 2, NV>(K, alpha, a, a_row, a_col, B, ldb, beta, c, ldc); break;
    case 1: micro_kernel<T, 1, NV>(K, alpha, a, a_row, a_col, B, ldb, beta, c, ldc); break;
    default: break;
  }
}

// C[M, N] = alpha * A[M, K] B[K, N] + beta * C, A(m, k) = A[m * a_row + k * a_col],
// B(k, n) = B[k * ldb + n], C(m, n) = C[m * ldc + n].
template <typename T>
void gemm(int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t a_row, int64_t a_col,
          const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  constexpr int W = Vec<T>::kLanes;
  int64_t n0 = 0;
  for (; n0 + 2 * W <= N; n0 += 2 * W)
    row_blocks<T, 2>(M, K, alpha, A, a_row, a_col, B + n0, ldb, beta, C + n0, ldc);
  for (; n0 + W <= N; n0 += W)
    row_blocks<T, 1>(M, K, alpha, A, a_row, a_col, B + n0, ldb, beta, C + n0, ldc);
  if (n0 == N) return;
  // Fewer than one vector of columns left: pad them to a vector on the stack.
  const int64_t rest = N - n0;
  T c_pad[kRows * W];
  T b_pad[W];
  for (int64_t m0 = 0; m0 < M; m0 += kRows) {
    const int64_t rows = M - m0 < kRows ? M - m0 : kRows;
    for (int64_t m = 0; m < rows; ++m)
      for (int64_t n = 0; n < W; ++n) c_pad[m * W + n] = T(0);
    for (int64_t k = 0; k < K; ++k) {
      for (int64_t n = 0; n < W; ++n) b_pad[n] = n < rest ? B[k * ldb + n0 + n] : T(0);
      const T* a = A + m0 * a_row + k * a_col;
      for (int64_t m = 0; m < rows; ++m) {
        const T am = a[m * a_row];
        for (int64_t n = 0; n < W; ++n) c_pad[m * W + n] += am * b_pad[n];
      }
    }
    for (int64_t m = 0; m < rows; ++m) {
      T* c = C + (m0 + m) * ldc + n0;
      for (int64_t n = 0; n < rest; ++n)
        c[n] = alpha * c_pad[m * W + n] + (beta != T(0) ? beta * c[n] : T(0));
    }
  }
}

// dst[c * ld_dst + r] = src[r * ld_src + c]: packs K^T or V^T tiles as row-major B operands.
template <typename T>
void transpose(int64_t rows, int64_t cols, const T* src, int64_t ld_src, T* dst, int64_t ld_dst) {
  constexpr int64_t kBlock = 16;
  for (int64_t r0 = 0; r0 < rows; r0 += kBlock)
    for (int64_t c0 = 0; c0 < cols; c0 += kBlock) {
      const int64_t r1 = r0 + kBlock < rows ? r0 + kBlock : rows;
      const int64_t c1 = c0 + kBlock < cols ? c0 + kBlock : cols;
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c) dst[c * ld_dst + r] = src[r * ld_src + c];
    }
}

}  // namespace tile_gemm
}  // namespace fastseq
