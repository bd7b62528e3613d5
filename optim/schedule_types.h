// The learning-rate schedule types, listed once (header-only: nnx-train's config validation uses
// it without linking the optimizer library).
#pragma once

#include <string>
#include <vector>

namespace nnx::optim {

/// The schedule types Schedule::from_json builds (optim/schedule.h): constant, linear_warmup,
/// cosine_decay, warmup_cosine, step_decay.
inline const std::vector<std::string>& schedule_types() {
  static const std::vector<std::string> types = {"constant", "linear_warmup", "cosine_decay", "warmup_cosine", "step_decay"};
  return types;
}

}  // namespace nnx::optim
