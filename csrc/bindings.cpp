// The one pybind11 module, fastseq._C: the whole C++ surface in one place. This is the
// only file that includes torch/extension.h (it alone costs ~40 s to compile).
#include <torch/extension.h>

#include "common/build_info.h"
#include "common/gemm.h"

// ---- lstm declarations ----
#include "lstm/lstm.h"

// ---- gru / rnn declarations ----
#include "gru_rnn/gru_rnn.h"
#include "recurrent/cpu_engine.h"

// ---- attention declarations ----
#include "attention/attention.h"
#include "attention/attention_settings.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastseq fused kernels (see fastseq.ops for the autograd-aware wrappers)";
  m.def("built_with_cuda", &fastseq::built_with_cuda,
        "True when the CUDA kernels were compiled into this module");
  m.def("set_cpu_gemm_backend", &fastseq::set_cpu_gemm_backend, py::arg("name"),
        "Library for large CPU float32 GEMMs: \"auto\" (oneDNN on AMD, ATen/MKL elsewhere), "
        "\"onednn\" or \"aten\"");
  m.def("recurrent_engine_settings", [] {
        py::dict d;
        d["min_macs_per_thread"] = fastseq::recurrent::get_min_macs_per_thread();
        static const char* names[] = {"auto", "fused", "gemm"};
        d["input_projection"] = names[static_cast<int>(fastseq::recurrent::get_input_projection())];
        return d;
      }, "the CPU recurrent engine's settings (see set_recurrent_engine_settings)");
  m.def("set_recurrent_engine_settings",
        [](std::optional<int64_t> min_macs_per_thread, std::optional<std::string> input_projection) {
          using fastseq::recurrent::InputProjection;
          if (input_projection) {
            const std::string& p = *input_projection;
            TORCH_CHECK(p == "auto" || p == "fused" || p == "gemm",
                        "set_recurrent_engine_settings: input_projection must be \"auto\", \"fused\" or "
                        "\"gemm\", got \"", p, "\"");
            fastseq::recurrent::set_input_projection(p == "auto"    ? InputProjection::kAuto
                                                     : p == "fused" ? InputProjection::kFused
                                                                    : InputProjection::kGemm);
          }
          if (min_macs_per_thread) fastseq::recurrent::set_min_macs_per_thread(*min_macs_per_thread);
        },
        py::arg("min_macs_per_thread") = py::none(), py::arg("input_projection") = py::none(),
        "min_macs_per_thread: multiply-adds per thread and time step below which the CPU recurrent "
        "engine uses fewer threads (1: every available thread at every size; default 8192). "
        "input_projection: \"auto\" (the cost model), \"fused\" (LSTM / RNN: x_t W_ih^T accumulated "
        "in each step's micro-kernel) or \"gemm\" (large GEMMs over chunks of steps)");
  m.def("recurrent_engine_runs_bfloat16", &fastseq::recurrent::engine_runs_bfloat16, py::arg("input"),
        py::arg("hidden_size"),
        "True when an LSTM layer's bfloat16 inference on this input runs natively in bfloat16 on the "
        "CPU engine (oneDNN bfloat16 brgemm: AMX / AVX512-BF16); otherwise it computes in float32");
  m.def("cpu_gemm_backend", &fastseq::cpu_gemm_backend,
        "The library running large CPU float32 GEMMs now: \"onednn\" or \"aten\"");
  m.attr("compiler") = py::str(
#if defined(__clang__)
      "clang " __clang_version__
#elif defined(__GNUC__)
      "gcc " __VERSION__
#else
      "unknown"
#endif
  );

  // ---- lstm bindings ----
  m.def("lstm_layer_forward", &fastseq::lstm_layer_forward, py::arg("input"), py::arg("h0"),
        py::arg("c0"), py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"),
        py::arg("w_hr"), py::arg("batch_sizes"), py::arg("reverse"),
        py::arg("save_for_backward") = true,
        "One LSTM layer, one direction, whole sequence -> [output, h_n, c_n, gates, cells]");
  m.def("lstm_layer_backward", &fastseq::lstm_layer_backward, py::arg("grad_output"),
        py::arg("grad_h_n"), py::arg("grad_c_n"), py::arg("input"), py::arg("h0"), py::arg("c0"),
        py::arg("w_ih"), py::arg("w_hh"), py::arg("w_hr"), py::arg("batch_sizes"),
        py::arg("reverse"), py::arg("has_bias"), py::arg("output"), py::arg("gates"),
        py::arg("cells"), py::arg("need_d_input") = true,
        "Backward through time of lstm_layer_forward -> [d_input, d_h0, d_c0, d_w_ih, d_w_hh, "
        "d_bias, d_w_hr]");
  m.def("lstm_cell_forward", &fastseq::lstm_cell_forward, py::arg("input"), py::arg("h"),
        py::arg("c"), py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"),
        "One LSTMCell step -> [h_next, c_next, gates]");
  m.def("lstm_cell_backward", &fastseq::lstm_cell_backward, py::arg("grad_h_next"),
        py::arg("grad_c_next"), py::arg("input"), py::arg("h"), py::arg("c"), py::arg("w_ih"),
        py::arg("w_hh"), py::arg("has_bias"), py::arg("gates"), py::arg("c_next"),
        py::arg("need_d_input") = true, py::arg("need_d_h") = true,
        "Backward of lstm_cell_forward -> [d_input, d_h, d_c, d_w_ih, d_w_hh, d_bias]");
  m.def("lstm_cell", &fastseq::lstm_cell, py::arg("input"), py::arg("h"), py::arg("c"),
        py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"),
        "One LSTMCell step with its autograd (C++ node) -> [h_next, c_next]");

  // ---- gru / rnn bindings ----
  m.def("gru_forward", &fastseq::gru_forward, "fused GRU, one layer and direction over a sequence",
        py::arg("input"), py::arg("hx"), py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"),
        py::arg("batch_sizes"), py::arg("reverse"), py::arg("need_workspace"));
  m.def("gru_backward", &fastseq::gru_backward, "backward through time of gru_forward",
        py::arg("grad_output"), py::arg("grad_hy"), py::arg("input"), py::arg("hx"), py::arg("w_ih"),
        py::arg("w_hh"), py::arg("output"), py::arg("workspace"), py::arg("batch_sizes"), py::arg("reverse"),
        py::arg("need_input_grad"), py::arg("need_hx_grad"));
  m.def("rnn_forward", &fastseq::rnn_forward, "fused Elman RNN (tanh/relu), one layer and direction",
        py::arg("input"), py::arg("hx"), py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"),
        py::arg("batch_sizes"), py::arg("reverse"), py::arg("nonlinearity"));
  m.def("gru_cell_forward", &fastseq::gru_cell_forward, "one fused GRU step (GRUCell)", py::arg("input"),
        py::arg("hx"), py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"), py::arg("need_workspace"));
  m.def("rnn_cell_forward", &fastseq::rnn_cell_forward, "one fused Elman RNN step (RNNCell)", py::arg("input"),
        py::arg("hx"), py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"), py::arg("nonlinearity"));
  m.def("gru_cell", &fastseq::gru_cell, "one fused GRU step with its autograd (C++ node)", py::arg("input"),
        py::arg("hx"), py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"));
  m.def("rnn_cell", &fastseq::rnn_cell, "one fused Elman RNN step with its autograd (C++ node)", py::arg("input"),
        py::arg("hx"), py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"), py::arg("nonlinearity"));
  m.def("rnn_backward", &fastseq::rnn_backward, "backward through time of rnn_forward",
        py::arg("grad_output"), py::arg("grad_hy"), py::arg("input"), py::arg("hx"), py::arg("w_ih"),
        py::arg("w_hh"), py::arg("output"), py::arg("batch_sizes"), py::arg("reverse"), py::arg("nonlinearity"),
        py::arg("need_input_grad"), py::arg("need_hx_grad"));

  // ---- attention bindings ----
  m.def("attention_forward", &fastseq::attention_forward, "fused scaled-dot-product attention forward",
        py::arg("query"), py::arg("key"), py::arg("value"), py::arg("attn_mask"),
        py::arg("dropout_p"), py::arg("is_causal"), py::arg("scale"), py::arg("seed"),
        py::arg("return_weights"), py::arg("average_weights") = false);
  m.def("attention_backward", &fastseq::attention_backward, "fused scaled-dot-product attention backward",
        py::arg("grad_out"), py::arg("grad_weights"), py::arg("weights"), py::arg("query"),
        py::arg("key"), py::arg("value"), py::arg("out"), py::arg("lse"), py::arg("attn_mask"),
        py::arg("dropout_p"), py::arg("is_causal"), py::arg("scale"), py::arg("seed"),
        py::arg("mask_grad"));
  m.def("attention_settings", &fastseq::attention_settings,
        "The CPU attention settings in force: {'gemm': 'auto'|'tile'|'blas', tile sizes...}");
  m.def(
      "set_attention_settings",
      [](py::kwargs kwargs) {
        // Python values -> the C++ variant; names and ranges are checked in C++, types here
        // (bool is an int to Python, and no tile size is a bool).
        std::map<std::string, fastseq::AttentionSettingValue> updates;
        for (const auto& item : kwargs) {
          const std::string name = py::str(item.first);
          const py::handle value = item.second;
          if (py::isinstance<py::str>(value))
            updates[name] = value.cast<std::string>();
          else if (py::isinstance<py::int_>(value) && !py::isinstance<py::bool_>(value))
            updates[name] = value.cast<int64_t>();
          else
            throw py::type_error("set_attention_settings: " + name + " must be an int or a str, got " +
                                 std::string(py::str(py::type::of(value).attr("__name__"))));
        }
        fastseq::set_attention_settings(updates);
      },
      "Changes CPU attention settings by name (see attention_settings()); all checked before any "
      "applies");
}
