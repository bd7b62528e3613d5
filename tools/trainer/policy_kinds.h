// The kinds of checkpoint.save and checkpoint.keep entries, listed once, and each entry typed:
// load_config() reads them, checkpoint_options.cpp builds each (a switch the compiler checks is
// complete).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "nnx/trainer/enum_names.h"

namespace nnx::trainer {

/// checkpoint.save entries (Orbax's save decision policies).
enum class SavePolicyKind { kFixedInterval, kSpecificSteps, kPreemption, kContinuous, kInitialSave };
inline constexpr EnumName<SavePolicyKind> kSavePolicyKinds[] = {{SavePolicyKind::kFixedInterval, "fixed_interval"},
                                                                 {SavePolicyKind::kSpecificSteps, "specific_steps"},
                                                                 {SavePolicyKind::kPreemption, "preemption"},
                                                                 {SavePolicyKind::kContinuous, "continuous"},
                                                                 {SavePolicyKind::kInitialSave, "initial_save"}};

/// checkpoint.keep entries (Orbax's preservation policies).
enum class KeepPolicyKind { kLatestN, kBestN, kEveryNSteps, kEveryNSeconds, kCustomSteps, kLatestDurationSeconds };
inline constexpr EnumName<KeepPolicyKind> kKeepPolicyKinds[] = {{KeepPolicyKind::kLatestN, "latest_n"},
                                                                 {KeepPolicyKind::kBestN, "best_n"},
                                                                 {KeepPolicyKind::kEveryNSteps, "every_n_steps"},
                                                                 {KeepPolicyKind::kEveryNSeconds, "every_n_seconds"},
                                                                 {KeepPolicyKind::kCustomSteps, "custom_steps"},
                                                                 {KeepPolicyKind::kLatestDurationSeconds, "latest_duration_seconds"}};

/// One checkpoint.save entry, as load_config() validated it: its kind and that kind's
/// parameters (the others keep their defaults).
struct SavePolicyConfig {
  SavePolicyKind kind = SavePolicyKind::kFixedInterval;
  int64_t interval_steps = 0;              ///< fixed_interval: save every this many steps (>= 1)
  std::vector<int64_t> steps;              ///< specific_steps (each >= 1)
  int64_t minimum_interval_steps = 1;      ///< continuous
  double minimum_interval_seconds = 0.0;   ///< continuous
};

/// One checkpoint.keep entry, as load_config() validated it.
struct KeepPolicyConfig {
  KeepPolicyKind kind = KeepPolicyKind::kLatestN;
  int64_t n = 0;               ///< latest_n, every_n_steps, best_n's n (>= 1)
  double seconds = 0.0;        ///< every_n_seconds, latest_duration_seconds (> 0)
  std::vector<int64_t> steps;  ///< custom_steps (each >= 0)
  std::string metric, mode;    ///< best_n: eval_loss | eval_accuracy | loss, and min | max
  bool keep_checkpoints_without_metrics = true;  ///< best_n
};

/// The entry as docs/config.md writes it, normalized ({kind: value}; e.g. {"fixed_interval":
/// 1000}, {"continuous": {"minimum_interval_steps": 1, "minimum_interval_seconds": 0.0}}): what
/// Config::to_json() prints and every checkpoint's saved config holds.
nlohmann::json to_json(const SavePolicyConfig& p);
/// The same for a keep entry (e.g. {"best_n": {"n": 2, "metric": "eval_loss", "mode": "min",
/// "keep_checkpoints_without_metrics": true}}).
nlohmann::json to_json(const KeepPolicyConfig& p);

/// The names of a kind table, in its order.
template <class E, size_t N>
std::vector<std::string> names_of(const EnumName<E> (&names)[N]) {
  std::vector<std::string> out;
  for (const auto& n : names) out.push_back(n.name);
  return out;
}

/// The kind named `name` in `table`; nullopt when none is.
template <class E, size_t N>
std::optional<E> kind_named(const std::string& name, const EnumName<E> (&table)[N]) {
  for (const auto& n : table)
    if (name == n.name) return n.value;
  return std::nullopt;
}

}  // namespace nnx::trainer
