// One time step's pointwise work, as plain pointers and sizes: what the device-agnostic
// sequence loop hands to a CPU or CUDA backend. Framework-free so the .cu kernels see it too.
#pragma once

#include <cstdint>

namespace fastseq {
namespace gru_rnn {

// Rows [0, rows) of the batch are active at this step; every [rows, k*H] block has row
// stride k*H. Biases are never null (zeros stand in for a module built with bias=False).
// `acc` is the accumulation type (float for half/bfloat16, else the tensor type).
struct GruStepForward {
  const void* gi;    // [rows, 3H] W_ih x (no bias), gates r, z, n
  const void* gh;    // [rows, 3H] W_hh h (no bias)
  const void* b_ih;  // [3H]
  const void* b_hh;  // [3H]
  const void* h_in;  // [rows, H] state before the step
  void* h_out;       // [rows, H] state after the step (may alias h_in: each element is read first)
  void* out;         // [rows, H] output at this step (h'; may alias h_out)
  void* ws;          // [rows, 4H] acc: r, z, n, W_hn h + b_hn for backward; null when not training
  int64_t rows, hidden;
};

struct GruStepBackward {
  const void* grad_out;  // [rows, H] dL/d output at this step
  void* dh;              // [rows, H] in: dL/dh' carried from later steps; out: its direct part z*dh'
  const void* h_prev;    // [rows, H] state before the step
  const void* ws;        // [rows, 4H] acc, as written by the forward
  void* dgi;             // [rows, 3H] dL/d(W_ih x + b_ih)
  void* dgh;             // [rows, 3H] dL/d(W_hh h + b_hh)
  int64_t rows, hidden;
};

struct RnnStepForward {
  const void* gi;    // [rows, H] W_ih x (no bias)
  const void* gh;    // [rows, H] W_hh h (no bias)
  const void* b_ih;  // [H]
  const void* b_hh;  // [H]
  void* h;           // [rows, H] state: read h, write h'
  void* out;         // [rows, H] output at this step (h')
  int64_t rows, hidden;
  bool relu;         // false: tanh
};

struct RnnStepBackward {
  const void* grad_out;  // [rows, H]
  const void* dh;        // [rows, H] dL/dh' carried from later steps
  const void* h_new;     // [rows, H] output of this step
  void* da;              // [rows, H] dL/d(pre-activation), for both projections
  int64_t rows, hidden;
  bool relu;
};

}  // namespace gru_rnn
}  // namespace fastseq
