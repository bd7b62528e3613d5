#include "nnx/framework/log.h"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdlib>
#include <mutex>

namespace nnx::log {

namespace {
std::mutex g_mu;
std::shared_ptr<spdlog::logger> g_logger;

spdlog::level::level_enum to_spd(Level l) {
  switch (l) {
    case Level::kDebug: return spdlog::level::debug;
    case Level::kInfo: return spdlog::level::info;
    case Level::kWarning: return spdlog::level::warn;
    case Level::kError: return spdlog::level::err;
    default: return spdlog::level::off;
  }
}

spdlog::logger& logger() {
  std::lock_guard<std::mutex> lock(g_mu);
  if (!g_logger) {
    g_logger = std::make_shared<spdlog::logger>("nnx", std::make_shared<spdlog::sinks::stderr_sink_mt>());
    g_logger->set_pattern("%n: %l: %v");
    g_logger->set_level(spdlog::level::info);
    if (const char* env = std::getenv("NNX_LOG_LEVEL")) g_logger->set_level(to_spd(level_from_string(env)));
  }
  return *g_logger;
}
}  // namespace

Level level_from_string(const std::string& name) {
  if (name == "debug") return Level::kDebug;
  if (name == "info") return Level::kInfo;
  if (name == "warning" || name == "warn") return Level::kWarning;
  if (name == "error") return Level::kError;
  if (name == "off") return Level::kOff;
  NNX_CHECK(false, "unknown log level '", name, "' (expected debug, info, warning, error or off)");
  return Level::kInfo;
}

void set_level(Level level) { logger().set_level(to_spd(level)); }

void configure(const std::string& program, int rank, int world_size) {
  auto& l = logger();
  const bool launched = std::getenv("NNX_LAUNCH") != nullptr;
  std::string prefix = world_size > 1 && !launched ? "[rank " + std::to_string(rank) + "] " : "";
  l.set_pattern(prefix + program + ": %l: %v");
}

void debug(const std::string& m) { logger().debug(m); }
void info(const std::string& m) { logger().info(m); }
void warning(const std::string& m) { logger().warn(m); }
void error(const std::string& m) { logger().error(m); }

}  // namespace nnx::log
