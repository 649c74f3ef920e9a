// The CPU sequence engine: one time loop for every recurrent cell (LSTM, GRU, Elman RNN),
// templated on a cell policy (cpu_cells.h). It runs the recurrent half of a layer: per step
// h_{t-1} W_hh^T on the register-blocked micro-kernel (cpu_step_gemm.h) with the cell's gate
// math applied to the accumulators in registers (forward), or the cell's pointwise backward
// and dh_{t-1} = dG_t W_hh (backward), all steps inside one parallel region whose threads
// own fixed tiles of units (cpu_team.h). The forward's input projection is the engine's too
// (large GEMMs over chunks of steps, or accumulated in the step's micro-kernel); the weight
// gradients stay large GEMMs over all steps in the callers (lstm_layer.cpp, gru_rnn_loops.cpp).
//
// Covered: CPU float32 and float64, and bfloat16 on CPUs with bfloat16 brgemm (its steps in
// cpu_engine_bfloat16.cpp), no LSTM projection (proj_size); callers keep their generic
// per-step loop for other cases (CUDA, proj_size > 0, bfloat16 elsewhere).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace fastseq {
namespace recurrent {

enum class CellKind { kLstm, kGru, kRnnTanh, kRnnRelu };

// The one chunk size of the recurrent layers' buffers over steps (the engine's input
// projection, the per-step LSTM's inference projection, the GRU / RNN backward's dG and
// h_prev): this many bytes of steps at a time. A bounded buffer that malloc reuses (glibc
// raises its mmap threshold to a freed chunk's size: no fresh pages per call), yet GEMMs of
// hundreds of rows. Measured on 2 Xeon cores (AMX): 1 MB chunks 3-8% slower than 8 MB at LSTM
// B=64 H=256 (input projection); 2 MB held only 2-4 GRU backward steps at B=64 H=512, whose
// weight-gradient GEMMs then summed 128-256 rows: training T=35 B=64 H=512 GRU bfloat16
// 0.97-0.99x -> 1.21-1.34x torch and RNN float32 1.03x -> 1.16-1.18x with 8 MB.
constexpr int64_t kChunkBytes = int64_t(8) << 20;

// Gates per unit: 4 (LSTM i, f, g, o), 3 (GRU r, z, n), 1 (RNN).
constexpr int64_t gate_count(CellKind kind) {
  return kind == CellKind::kLstm ? 4 : kind == CellKind::kGru ? 3 : 1;
}

// True when the engine runs this input ([T, B, I]) and pays off: CPU float32 / float64, and
// at least kMinEngineSteps steps. Packing W_hh costs about as much as one step's GEMM at
// small batches, while the per-step loop pays ~5-10 us of framework calls per step, so
// T = 1-3 (the cells' backward: T = 1) is cheaper without the engine. Measured on the 2-core
// Xeon (AMX), T = 1-3, B = 1-64, H = 64-256, against torch: LSTM inference 0.99-1.43x on
// the engine vs 0.97-3.9x per step; GRU / RNN at T = 1 0.77-1.07x vs 0.94-1.28x.
constexpr int64_t kMinEngineSteps = 4;
bool engine_supports(const at::Tensor& input);
// True when the engine runs a layer of this input and hidden size: engine_supports, or
// bfloat16 on its bfloat16 steps (engine_runs_bfloat16). Forward and backward decide alike.
bool engine_runs(const at::Tensor& input, int64_t hidden_size);

// A weight [G*H, K] (W_hh, or W_ih for the fused input projection) in the layout of the
// forward step GEMM (gate columns of one unit block side by side), and W_hh [G*H, H] in the
// backward's (column panels of the hidden state).
at::Tensor pack_forward_weight(const at::Tensor& weight, int64_t gates);
at::Tensor pack_backward_weight(const at::Tensor& w_hh);

// One layer direction forward, processing steps [s_begin, s_end) of a T-step sequence (time
// t = s, or T-1-s in reverse). All buffers are contiguous with row stride as noted;
// rows[t] = active rows at time t (sorted sequences, non-increasing; nullptr: all B).
// The caller fills the fields down to `b_hn`; forward_sequence sets the rest.
struct ForwardRun {
  CellKind kind;
  int64_t T, B, H;
  const int64_t* rows;
  bool reverse;
  void* h;             // [2, B, H] the state before step s is h[s % 2]; the caller fills
                       // h[0] with h0 and reads h[T % 2]
  void* c;             // LSTM [B, H] cell state, updated in place
  void* out;           // [T, B, H] outputs (rows >= rows[t] untouched: the caller zeroes them)
  void* saved;         // training: LSTM cells [T, B, H] (inactive rows carry c),
                       // GRU [T, B, 4H] (r, z, n, W_hn h + b_hn); nullptr: inference
  const void* b_hn;    // GRU [H] the recurrent bias of the n gate

  const void* bias = nullptr;  // [G*H] added to the input projection (LSTM/RNN b_ih + b_hh,
                               // GRU b_ih plus b_hr, b_hz), or nullptr
  int64_t s_begin = 0, s_end = 0;
  const void* gx = nullptr;  // [.., B, G*H] x W_ih^T of times gx_t0..., or nullptr when the
  int64_t gx_t0 = 0;         // steps accumulate x_t W_ih^T themselves (packed_x)
  const void* x = nullptr;   // [T, B, I] with packed_x = pack_forward_weight(w_ih, G)
  int64_t I = 0;
  const at::Tensor* packed_x = nullptr;
  void* gates = nullptr;     // LSTM training: [T, B, 4H] activated gates (what backward reads)
  const at::Tensor* packed = nullptr;  // pack_forward_weight(w_hh, G)
};

// Runs `run` over the whole sequence: the input projection, either as large GEMMs over
// chunks of steps (common/gemm.h) or accumulated inside each step's micro-kernel with the
// recurrent term (LSTM / RNN, where the step's GEMM is large enough: see
// fuse_input_projection), then every step. x [T, B, I] contiguous, w_ih [G*H, I], w_hh
// [G*H, H], bias [G*H] of x's dtype or undefined (sets run.bias). keep_gates (LSTM
// training): returns the activated gates [T, B, 4H]; otherwise an empty tensor.
at::Tensor forward_sequence(ForwardRun run, const at::Tensor& x, const at::Tensor& w_ih,
                            const at::Tensor& w_hh, const at::Tensor& bias, bool keep_gates);

// bfloat16 layers on the engine (cpu_engine_bfloat16.cpp): CPU bfloat16 [T, B, I] input,
// T >= kMinEngineSteps, H even, and oneDNN's bfloat16 brgemm usable on this CPU (AMX or
// AVX512-BF16) in an AVX-512 build. Elsewhere bfloat16 layers compute in float32.
bool engine_runs_bfloat16(const at::Tensor& input, int64_t hidden_size);
bool bfloat16_brgemm_available();
// W_hh [G*H, H] in bfloat16 as the forward steps' VNNI panels [H, G x 16] per 16 units.
at::Tensor pack_forward_weight_bfloat16(const at::Tensor& w_hh, int64_t gates);
// The steps [run.s_begin, run.s_end) with run.gx set (bfloat16) and h, out bfloat16; bias
// [G*H], run.b_hn (GRU), the LSTM cell state c [B, H] (else nullptr) and run.saved /
// run.gates (training) in float32.
void forward_bfloat16(const ForwardRun& run, const at::Tensor& packed, const float* bias, float* c);

// How the input projection runs: kAuto (the cost model), kFused (in the steps, where the
// cell allows it) or kGemm (large GEMMs). Exposed as fastseq._C.set_recurrent_engine_settings.
enum class InputProjection { kAuto = 0, kFused = 1, kGemm = 2 };
void set_input_projection(InputProjection mode);
InputProjection get_input_projection();

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

// The cost model's one constant: multiply-adds per thread and step below which a thread is
// not worth its barrier (cpu_team.h). Exposed as fastseq._C.set_recurrent_engine_settings.
void set_min_macs_per_thread(int64_t macs);
int64_t get_min_macs_per_thread();
void run_backward(const BackwardRun& run, c10::ScalarType dtype);

// The bfloat16 backward steps: run as for run_backward with grad_out, h_prev (GRU), out (RNN)
// and dG (dgi, dgh: zeros in inactive rows) in bfloat16; dh, dc, gates, cells, c0 (LSTM) and
// ws (GRU) in float32; packed = pack_backward_weight_bfloat16(w_hh), W_hh's columns in
// blocks of 16 units.
at::Tensor pack_backward_weight_bfloat16(const at::Tensor& w_hh);
void backward_bfloat16(const BackwardRun& run, const at::Tensor& packed);

}  // namespace recurrent
}  // namespace fastseq
