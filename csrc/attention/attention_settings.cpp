// The one instance of the CPU attention settings (attention_settings.h), behind a mutex:
// a call copies it once, a change replaces it whole after every field was checked.
#include "attention/attention_settings.h"

#include <c10/util/Exception.h>

#include <mutex>
#include <sstream>

namespace fastseq {
namespace {

constexpr const char* kFn = "set_attention_settings";
constexpr int64_t kMaxTile = 4096;  // tiles beyond this only cost scratch memory

std::mutex settings_mutex;
AttentionSettings settings;

const char* gemm_name(AttentionGemm g) {
  switch (g) {
    case AttentionGemm::kTile: return "tile";
    case AttentionGemm::kBlas: return "blas";
    default: return "auto";
  }
}

// The integer settings: name, field, smallest allowed value (0 only where 0 means "by L").
struct TileField {
  const char* name;
  int64_t AttentionSettings::*field;
  int64_t min;
  const char* zero_means;  // what 0 selects, where min is 0
};
constexpr TileField kTiles[] = {
    {"block_q", &AttentionSettings::block_q, 1, ""},
    {"block_k", &AttentionSettings::block_k, 1, ""},
    {"block_q_bwd", &AttentionSettings::block_q_bwd, 1, ""},
    {"block_k_bwd", &AttentionSettings::block_k_bwd, 1, ""},
    {"br_block_q", &AttentionSettings::br_block_q, 0, "chosen by L"},
    {"br_block_k", &AttentionSettings::br_block_k, 1, ""},
    {"br_block_q_bwd", &AttentionSettings::br_block_q_bwd, 1, ""},
    {"br_block_k_bwd", &AttentionSettings::br_block_k_bwd, 0, "chosen by is_causal"},
};

std::string valid_names() {
  std::ostringstream out;
  out << "gemm";
  for (const auto& t : kTiles) out << ", " << t.name;
  return out.str();
}

AttentionGemm parse_gemm(const AttentionSettingValue& value) {
  const auto* name = std::get_if<std::string>(&value);
  TORCH_CHECK_TYPE(name != nullptr, kFn, ": gemm must be a str ('auto', 'tile' or 'blas'), got ",
                   "the integer ", std::get<int64_t>(value));
  if (*name == "auto") return AttentionGemm::kAuto;
  if (*name == "blas") return AttentionGemm::kBlas;
  if (*name == "tile") {
#if defined(__AVX512F__)
    return AttentionGemm::kTile;
#else
    TORCH_CHECK_VALUE(false, kFn, ": gemm='tile' needs AVX-512 (tile_gemm.h) and this build "
                      "has none; use 'auto' or 'blas'");
#endif
  }
  TORCH_CHECK_VALUE(false, kFn, ": gemm must be 'auto', 'tile' or 'blas', got '", *name, "'");
  return AttentionGemm::kAuto;  // unreachable: TORCH_CHECK_VALUE(false) throws
}

}  // namespace

AttentionSettings attention_settings_snapshot() {
  std::lock_guard<std::mutex> lock(settings_mutex);
  return settings;
}

std::map<std::string, AttentionSettingValue> attention_settings() {
  const AttentionSettings s = attention_settings_snapshot();
  std::map<std::string, AttentionSettingValue> out;
  out["gemm"] = std::string(gemm_name(s.gemm));
  for (const auto& t : kTiles) out[t.name] = s.*(t.field);
  return out;
}

void set_attention_settings(const std::map<std::string, AttentionSettingValue>& updates) {
  // Checked and applied under the lock: two concurrent updates cannot interleave.
  std::lock_guard<std::mutex> lock(settings_mutex);
  AttentionSettings next = settings;
  for (const auto& [name, value] : updates) {
    if (name == "gemm") {
      next.gemm = parse_gemm(value);
      continue;
    }
    const TileField* tile = nullptr;
    for (const auto& t : kTiles)
      if (name == t.name) tile = &t;
    TORCH_CHECK_VALUE(tile != nullptr, kFn, ": unknown setting '", name, "'; expected one of ",
                      valid_names());
    const auto* n = std::get_if<int64_t>(&value);
    TORCH_CHECK_TYPE(n != nullptr, kFn, ": ", name, " must be an int, got the str '",
                     std::get<std::string>(value), "'");
    TORCH_CHECK_VALUE(*n >= tile->min && *n <= kMaxTile, kFn, ": ", name, " must be an int in [",
                      tile->min, ", ", kMaxTile, "]", tile->min == 0 ? " (0: " : "", tile->zero_means,
                      tile->min == 0 ? ")" : "", ", got ", *n);
    next.*(tile->field) = *n;
  }
  settings = next;
}

}  // namespace fastseq
