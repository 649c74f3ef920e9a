// The CPU sequence engine: one time loop for every recurrent cell (LSTM, GRU, Elman RNN),
// templated on a cell policy (cpu_cells.h). It runs the recurrent half of a layer: per step
// h_{t-1} W_hh^T on the register-blocked micro-kernel (cpu_step_gemm.h) with the cell's gate
// math applied to the accumulators in registers (forward), or the cell's pointwise backward
// and dh_{t-1} = dG_t W_hh (backward), all steps inside one parallel region whose threads
// own fixed tiles of units (cpu_team.h). The input projection and the weight gradients stay
// large GEMMs over all steps in the callers (lstm_layer.cpp, gru_rnn_loops.cpp).
//
// Covered: CPU float32 and float64, no LSTM projection (proj_size); callers keep their
// generic per-step loop for other cases (bfloat16, CUDA, proj_size > 0).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace fastseq {
namespace recurrent {

enum class CellKind { kLstm, kGru, kRnnTanh, kRnnRelu };

// Gates per unit: 4 (LSTM i, f, g, o), 3 (GRU r, z, n), 1 (RNN).
constexpr int64_t gate_count(CellKind kind) {
  return kind == CellKind::kLstm ? 4 : kind == CellKind::kGru ? 3 : 1;
}

// True when the engine runs this input ([T, B, I]) and pays off: CPU float32 / float64, and
// at least kMinEngineSteps steps. Packing W_hh costs about as much as one step's GEMM at
// small batches, while the per-step loop pays ~5-10 us of framework calls per step, so a
// single step (the cells' backward: T = 1) is cheaper without the engine.
constexpr int64_t kMinEngineSteps = 4;
bool engine_supports(const at::Tensor& input);

// W_hh [G*H, H] in the layouts of the two step GEMMs (gate columns of one unit block side by
// side for forward; column panels of the hidden state for backward).
at::Tensor pack_forward_weight(const at::Tensor& w_hh, int64_t gates);
at::Tensor pack_backward_weight(const at::Tensor& w_hh);

// Processing steps [s_begin, s_end) of a T-step sequence (time t = s, or T-1-s in reverse).
// All buffers are contiguous with row stride as noted; rows[t] = active rows at time t
// (sorted sequences, non-increasing; nullptr: all B).
struct ForwardRun {
  CellKind kind;
  int64_t T, B, H;
  const int64_t* rows;
  bool reverse;
  int64_t s_begin, s_end;
  void* gx;            // [.., B, G*H] pre-activations of times gx_t0...: x W_ih^T + biases
                       // (GRU: all but b_hn); LSTM overwrites them with the activated gates
                       // when `saved` is set (what backward reads)
  int64_t gx_t0;
  void* h;             // [2, B, H] the state before step s is h[s % 2]; the caller fills
                       // h[s_begin % 2] (h0 at s = 0) and reads h[s_end % 2]
  void* c;             // LSTM [B, H] cell state, updated in place
  void* out;           // [T, B, H] outputs (rows >= rows[t] untouched: the caller zeroes them)
  void* saved;         // training: LSTM cells [T, B, H] (inactive rows carry c),
                       // GRU [T, B, 4H] (r, z, n, W_hn h + b_hn); nullptr: inference
  const void* b_hn;    // GRU [H] the recurrent bias of the n gate
  const at::Tensor* packed;  // pack_forward_weight(w_hh, G)
};

struct BackwardRun {
  CellKind kind;
  int64_t T, B, H;
  const int64_t* rows;
  bool reverse;                // the forward's direction; steps run in the opposite order
  int64_t s_begin, s_end;      // backward processing steps (s = 0 is the forward's last step)
  bool need_last_dh;           // false: skip dh_{t-1} of the final step (no grad for h0)
  const void* grad_out;        // [T, B, H]
  void* dh;                    // [B, H] in: dL/dh_T; out: dL/dh0 (when need_last_dh)
  void* dc;                    // LSTM [B, H] in: dL/dc_T; out: dL/dc0
  const void* gates;           // LSTM [T, B, 4H] activated gates
  const void* cells;           // LSTM [T, B, H]
  const void* c0;              // LSTM [B, H]
  const void* ws;              // GRU [T, B, 4H]
  const void* h_prev;          // GRU [.., B, H] state entering time t at (t - buf_t0)
  const void* out;             // RNN [T, B, H] outputs
  void* dgi;                   // [.., B, G*H] at (t - buf_t0): dL/d(x W_ih^T + b_ih)
  void* dgh;                   // GRU [.., B, 3H]: dL/d(h W_hh^T + b_hh); others: == dgi
  int64_t buf_t0;
  const at::Tensor* packed;    // pack_backward_weight(w_hh)
};

void run_forward(const ForwardRun& run, c10::ScalarType dtype);

// The cost model's one constant: multiply-adds per thread and step below which a thread is
// not worth its barrier (cpu_team.h). Exposed as fastseq._C.set_recurrent_engine_settings.
void set_min_macs_per_thread(int64_t macs);
int64_t get_min_macs_per_thread();
void run_backward(const BackwardRun& run, c10::ScalarType dtype);

}  // namespace recurrent
}  // namespace fastseq
