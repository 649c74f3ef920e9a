// Framework-free descriptions of one LSTM pointwise pass (raw pointers, sizes): what the
// ATen-level sequence loop hands to the CPU loops and to the CUDA kernels.
#pragma once

#include <stdint.h>

namespace fastseq {
namespace lstm {

enum class Dtype { f32, f64, f16, bf16 };

// Rows [0, rows) of one step; every [rows, hidden] buffer has row stride `hidden`, gates
// have row stride 4 * hidden (blocks i, f, g, o).
struct ForwardStep {
  void* gates;          // in: pre-activations, out: activated gates
  const void* gates_add;  // optional second pre-activation term (h W_hh^T), or nullptr
  const void* c_prev;   // cell state entering the step
  void* c_next;         // cell state leaving the step (may alias c_prev)
  void* c_saved;        // optional second copy of c_next (per-step history), or nullptr
  void* h_out;          // h = o * tanh(c)
  void* h_out2;         // optional second copy of h, or nullptr
  int64_t rows;
  int64_t hidden;
};

struct BackwardStep {
  const void* gates;    // activated gates of the step
  const void* c;        // cell state leaving the step
  const void* c_prev;   // cell state entering the step
  const void* dh;       // gradient reaching h (before projection)
  const void* dh2;      // optional second gradient term added to dh, or nullptr
  void* dc;             // in: gradient reaching c; out: gradient for c_prev
  void* dgates;         // out: gradients of the pre-activations
  void* h_pre;          // optional out: o * tanh(c), or nullptr
  int64_t rows;
  int64_t hidden;
};

}  // namespace lstm
}  // namespace fastseq
