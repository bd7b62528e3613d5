// Runs the project's programs from tests and reads what they wrote.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "nnx/checkpoint/checkpointer.h"
#include "nnx/checkpoint/format/json_item.h"
#include "nnx/checkpoint/format/state_reader.h"
#include "nnx/checkpoint/format/state_writer.h"
#include "nnx/checkpoint/io/checksum.h"
#include "nnx/checkpoint/shard_planner.h"
#include "nnx/checkpoint/manager.h"
#include "nnx/checkpoint/format/directory.h"
#include "nnx/checkpoint/format/schema.h"
#include "nnx/checkpoint/verify.h"

extern char** environ;

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
/// .venv-interop's python (jax, flax, orbax-checkpoint, safetensors: tools/setup-interop.sh), or
/// "" when it has not been made; the interop tests skip then, saying so.
inline std::string interop_python() {
  const std::string py = source_dir() + "/.venv-interop/bin/python";
  return std::filesystem::exists(py) ? py : "";
}

/// metrics.jsonl as JSON records.
inline std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::vector<nlohmann::json> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  return out;
}

/// The complete records of a metrics.jsonl that a run may be appending to right now: lines that
/// end in '\n' (a record being written is left out, not parsed half-written).
inline size_t complete_jsonl_records(const std::string& path) {
  std::ifstream in(path);
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  return static_cast<size_t>(std::count(text.begin(), text.end(), '\n'));
}

/// Starts `args` (args[0]: the program's path), waits until `run_dir`/metrics.jsonl holds 5
/// records (up to 2 minutes of start-up under load), sends SIGTERM and waits. Returns the exit
/// code, -1 when the process did not exit normally, -2 when it could not be started.
inline int sigterm_after_training_starts(const std::vector<std::string>& args, const std::string& run_dir) {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid;
  if (posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), environ) != 0) return -2;
  for (int i = 0; i < 2400 && complete_jsonl_records(run_dir + "/metrics.jsonl") < 5; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ::kill(pid, SIGTERM);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
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

// Every item of `a` equals (bitwise) the same item of `b`; a failure names the item and where.
inline void expect_equal_states(const std::map<std::string, State>& a, const std::map<std::string, State>& b) {
  for (const auto& [item, s] : a) EXPECT_TRUE(s.equal(b.at(item))) << item << ": " << s.first_difference(b.at(item));
}

}  // namespace nnx::test
