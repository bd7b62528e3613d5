// The kinds of checkpoint.save and checkpoint.keep entries, listed once: load_config() reads
// their names, checkpoint_options.cpp builds each (a switch the compiler checks is complete).
#pragma once

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

/// The names of a kind table, in its order.
template <class E, size_t N>
std::vector<std::string> names_of(const EnumName<E> (&names)[N]) {
  std::vector<std::string> out;
  for (const auto& n : names) out.push_back(n.name);
  return out;
}

}  // namespace nnx::trainer
