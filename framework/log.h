// Logging with levels and a rank prefix, on spdlog (stderr). spdlog stays in log.cpp.
#pragma once

#include <string>

#include "nnx/framework/error.h"

namespace nnx::log {

enum class Level { kDebug, kInfo, kWarning, kError, kOff };

/// "debug", "info", "warning", "error" or "off"; throws nnx::Error naming the value otherwise.
Level level_from_string(const std::string& name);
/// Messages below `level` are dropped (default: info; the NNX_LOG_LEVEL variable sets it too).
void set_level(Level level);
/// Messages read "<program>: <level>: <text>", prefixed with "[rank r] " when world_size > 1
/// and the process was not started by nnx-launch (which prefixes every line itself).
void configure(const std::string& program, int rank = 0, int world_size = 1);

void debug(const std::string& message);
void info(const std::string& message);
void warning(const std::string& message);
void error(const std::string& message);

/// `nnx::log::warn_parts("x = ", 3)`: a warning built from streamed parts.
template <class... Parts>
void warn_parts(const Parts&... parts) {
  warning(detail::str(parts...));
}

}  // namespace nnx::log
