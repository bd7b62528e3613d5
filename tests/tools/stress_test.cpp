// Crash consistency of whole training runs: nnx-train (1 rank) and nnx-launch + nnx-train
// (2 ranks) are killed with SIGKILL at random moments (during steps, synchronous and
// asynchronous saves, retention deletes), then resumed until done. After every kill the latest
// listed step must verify and restore; at the end params, optimizer state, RNG streams and every
// logged loss must equal an uninterrupted run bit for bit.
// NNX_STRESS_TRIALS sets the number of trials per world size (default 15; 250 = a 500-trial run);
// the 2-rank ZeRO-1 and local-tier variants run a third as many.
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <fcntl.h>
#include <sys/wait.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "nnx/checkpoint/checkpointer.h"
#include "nnx/checkpoint/format/json_item.h"
#include "nnx/checkpoint/format/state_reader.h"
#include "nnx/checkpoint/format/state_writer.h"
#include "nnx/checkpoint/io/checksum.h"
#include "nnx/checkpoint/shard_planner.h"
#include "nnx/checkpoint/manager.h"
#include "test_util.h"
#include "nnx/checkpoint/emergency/local_tier.h"
#include "tools/run_util.h"

extern char** environ;

using namespace nnx;
using namespace nnx::checkpoint;
namespace stdfs = std::filesystem;

namespace {

std::vector<std::string> command(int ranks, const std::string& run_dir, bool async, const std::string& extra = "") {
  std::vector<std::string> argv;
  if (ranks > 1) argv = {test::bin("nnx-launch"), "--nproc", std::to_string(ranks), "--"};
  for (const std::string& a : {test::bin("nnx-train"), std::string("--config"), test::source_dir() + "/configs/tiny_synthetic.yaml",
                               "run.dir=" + run_dir, std::string("train.max_steps=150"), std::string("train.log_every=1"),
                               std::string("checkpoint.save_interval_steps=7"), std::string("checkpoint.max_to_keep=2"),
                               std::string("checkpoint.async=") + (async ? "true" : "false"), std::string("eval.every_steps=50")})
    argv.push_back(a);
  if (!extra.empty()) argv.push_back(extra);
  return argv;
}

// Runs to completion (returns the exit code) or kills after `kill_after_ms` (returns -1).
int run_or_kill(const std::vector<std::string>& args, int kill_after_ms, const std::string& log = "/dev/null") {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  pid_t pid;
  if (posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ) != 0) return -2;
  posix_spawn_file_actions_destroy(&fa);
  auto t0 = std::chrono::steady_clock::now();
  int status = 0;
  while (true) {
    if (::waitpid(pid, &status, WNOHANG) == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (kill_after_ms >= 0 && std::chrono::steady_clock::now() - t0 > std::chrono::milliseconds(kill_after_ms)) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      std::this_thread::sleep_for(std::chrono::milliseconds(100));  // ranks die with the launcher
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}


struct Totals {
  int trials = 0, kills = 0, resumed_from_checkpoint = 0;
};

void stress(int ranks, int trials, Totals& totals, const std::string& extra = "") {
  test::TempDir dir;
  std::mt19937 rng(1234 + ranks);
  std::map<bool, std::map<std::string, State>> reference;
  std::map<bool, std::vector<nlohmann::json>> reference_metrics;
  double ref_ms = 0;
  for (bool async : {false, true}) {
    const std::string ref = (dir / ("ref-" + std::to_string(async))).string();
    auto t0 = std::chrono::steady_clock::now();
    ASSERT_EQ(run_or_kill(command(ranks, ref, async, extra), -1), 0);
    ref_ms = std::max(ref_ms, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    reference[async] = test::final_states(ref);
    reference_metrics[async] = test::read_jsonl(ref + "/metrics.jsonl");
  }
  for (int t = 0; t < trials; ++t) {
    const bool async = t % 2 == 1;
    const std::string run = (dir / ("trial-" + std::to_string(t))).string();
    // A failing test keeps its folder (TempDir): the trial's runs, with every attempt's output in
    // <trial>.log, are there to read.
    SCOPED_TRACE("ranks " + std::to_string(ranks) + " trial " + std::to_string(t) + (async ? " async" : " sync") + " in " + run);
    const std::string log = run + ".log";
    // One or two kills at random moments, then run to the end.
    const int kills = 1 + static_cast<int>(rng() % 2);
    for (int k = 0; k < kills; ++k) {
      // Anywhere in the run: start-up, steps, saves, retention deletes.
      int rc = run_or_kill(command(ranks, run, async, extra),
                           std::uniform_int_distribution<int>(30, std::max(60, static_cast<int>(ref_ms * 0.9)))(rng), log);
      if (rc >= 0) break;  // finished before the kill
      ++totals.kills;
      if (!stdfs::exists(stdfs::path(run) / "checkpoints")) continue;  // killed during start-up
      CheckpointManagerOptions o;
      o.read_only = true;
      CheckpointManager m(stdfs::path(run) / "checkpoints", o);
      if (auto latest = m.latest_step()) {
        auto v = verify(m.step_path(*latest));
        EXPECT_TRUE(v.ok) << (v.problems.empty() ? "" : v.problems[0]);
        ++totals.resumed_from_checkpoint;
      }
    }
    int rc = run_or_kill(command(ranks, run, async, extra), -1, log);
    ASSERT_EQ(rc, 0) << std::ifstream(log).rdbuf();
    if (extra.find("checkpoint.local") != std::string::npos) {  // a finished run removes its local tier
      EXPECT_FALSE(stdfs::exists(nnx::checkpoint::emergency::default_local_directory(run))) << nnx::checkpoint::emergency::default_local_directory(run);
    }
    auto got = test::final_states(run);
    for (const auto& [item, s] : reference[async])
      EXPECT_TRUE(s.equal(got.at(item))) << item << ": " << s.first_difference(got.at(item));
    auto m = test::read_jsonl(run + "/metrics.jsonl");
    ASSERT_EQ(m.size(), reference_metrics[async].size());
    for (size_t i = 0; i < m.size(); ++i) EXPECT_EQ(m[i]["loss"].get<double>(), reference_metrics[async][i]["loss"].get<double>());
    ++totals.trials;
  }
}

// What a stress test saw, asserted rather than only printed: every trial ran to a bit-exact end
// (checked per trial above) and the kills happened; `what` names the test in its summary line.
void expect_and_report(const Totals& t, int trials, const std::string& what) {
  EXPECT_EQ(t.trials, trials) << what << ": trials that ran to the end";
  EXPECT_GT(t.kills, 0) << what << ": no SIGKILL landed before a run finished, so nothing was tested";
  std::cout << "[ stress ] " << what << ": " << t.trials << " trials, " << t.kills << " SIGKILLs, " << t.resumed_from_checkpoint
            << " resumes from a verified checkpoint, "
            << (::testing::Test::HasFailure() ? "FAILURES above" : "every run bit-exact") << "\n";
}

int trials_per_world_size() {
  const char* env = std::getenv("NNX_STRESS_TRIALS");
  return env ? std::atoi(env) : 15;
}

}  // namespace

TEST(Stress, RandomSigkillsDuringTrainingOneRank) {
  Totals t;
  const int trials = trials_per_world_size();
  stress(1, trials, t);
  expect_and_report(t, trials, "1 rank");
}

TEST(Stress, RandomSigkillsDuringTrainingTwoRanks) {
  Totals t;
  const int trials = trials_per_world_size();
  stress(2, trials, t);
  expect_and_report(t, trials, "2 ranks (SIGKILLs of the launcher)");
}

// ZeRO-1: every save writes each rank's piece of the sharded optimizer state.
TEST(Stress, RandomSigkillsDuringTrainingTwoRanksZeroOne) {
  Totals t;
  const int trials = std::max(2, trials_per_world_size() / 3);
  stress(2, trials, t, "distributed.zero_stage=1");
  expect_and_report(t, trials, "2 ranks, ZeRO-1 (SIGKILLs of the launcher)");
}

TEST(Stress, RandomSigkillsDuringTrainingTwoRanksLocalTier) {
  // The local tier every 3 steps, in each trial's own default folder under /dev/shm: resumes
  // come from it or from the persistent tier, whichever is newer, and stay bit-exact.
  Totals t;
  const int trials = std::max(2, trials_per_world_size() / 3);
  stress(2, trials, t, "checkpoint.local.save_interval_steps=3");
  expect_and_report(t, trials, "2 ranks, local tier (SIGKILLs of the launcher)");
}
