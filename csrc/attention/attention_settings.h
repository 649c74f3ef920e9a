// Run-time settings of the CPU attention kernels (which GEMM runs the tiles, the tile sizes):
// one struct, set from Python through fastseq._C.set_attention_settings (or the context
// manager fastseq.ops.attention_settings) and copied once at the start of every call, so
// tests and tuning switch paths in-process and a call never sees a half-applied change.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <variant>

namespace fastseq {

// auto: oneDNN brgemm where its micro-kernels serve this CPU (float32, and bfloat16/float16
// forwards where it packs them), tile_gemm.h's AVX-512 kernel for the other tiles, the BLAS
// without AVX-512. tile: tile_gemm.h everywhere (no brgemm; AVX-512 builds only). blas: the
// BLAS torch links (sgemm_/dgemm_) everywhere.
enum class AttentionGemm { kAuto, kTile, kBlas };

struct AttentionSettings {
  AttentionGemm gemm = AttentionGemm::kAuto;
  // Tiles of the tile_gemm / BLAS kernels. Forward: a query tile of rows shares each
  // key/value tile it loads; the key tile bounds the per-thread score buffer (block_q x
  // block_k floats, well within L2). Backward: the same for its probability and dP tiles.
  int64_t block_q = 64, block_k = 256;
  int64_t block_q_bwd = 64, block_k_bwd = 128;
  // Tiles of the brgemm kernels; br_block_q = 0 picks the forward's query tile by L,
  // br_block_k_bwd = 0 the backward's key tile by is_causal.
  int64_t br_block_q = 0, br_block_k = 512;
  int64_t br_block_q_bwd = 64, br_block_k_bwd = 0;
};

// A copy of the settings now in force (the kernels take one per call).
AttentionSettings attention_settings_snapshot();

// The Python view: name -> value ("gemm" a string, the tile sizes integers).
using AttentionSettingValue = std::variant<int64_t, std::string>;
std::map<std::string, AttentionSettingValue> attention_settings();

// Changes the named settings; every name, type and range is checked before any is applied
// (a bad update changes nothing). Errors name the setting, what it accepts and what came.
void set_attention_settings(const std::map<std::string, AttentionSettingValue>& updates);

}  // namespace fastseq
