// Runs the project's programs from tests and reads what they wrote.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "checkpoint/checkpointer.h"
#include "checkpoint/hdf5_io.h"
#include "checkpoint/manager.h"

namespace nnx::test {

struct RunResult {
  int exit_code = -1;   ///< exit status, or 128 + signal
  std::string output;   ///< stdout and stderr together
};

/// Runs `cmd` through /bin/sh with stderr merged into stdout.
inline RunResult run(const std::string& cmd) {
  RunResult r;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) r.output.append(buf, n);
  int status = ::pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

inline std::string bin(const std::string& name) { return std::string(NNX_BIN_DIR) + "/" + name; }
inline std::string source_dir() { return NNX_SOURCE_DIR; }

/// metrics.jsonl as JSON records.
inline std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::vector<nlohmann::json> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  return out;
}

/// The latest committed checkpoint of a run dir: every State item, read without a template.
inline std::map<std::string, State> final_states(const std::string& run_dir) {
  checkpoint::CheckpointManagerOptions o;
  o.read_only = true;
  checkpoint::CheckpointManager m(std::filesystem::path(run_dir) / "checkpoints", o);
  checkpoint::H5File f = checkpoint::H5File::open((m.step_path(*m.latest_step()) / checkpoint::kCheckpointFile).string());
  std::map<std::string, State> out;
  for (const auto& item : checkpoint::list_items(f)) out[item] = checkpoint::read_state_untemplated(f, item);
  return out;
}

}  // namespace nnx::test
