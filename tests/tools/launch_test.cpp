// nnx-launch and data-parallel nnx-train, run as users run them.
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <functional>
#include <thread>

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
#include "test_util.h"
#include "tools/run_util.h"

extern char** environ;

using namespace nnx;
using namespace nnx::checkpoint;
namespace stdfs = std::filesystem;

namespace {
std::string launch(int n, const std::string& program) {
  return test::bin("nnx-launch") + " --nproc " + std::to_string(n) + " -- " + program;
}
std::string helper() { return std::string(NNX_TESTS_BIN) + "/dist_helper"; }
std::string train(const std::string& run_dir, const std::string& extra = "") {
  return test::bin("nnx-train") + " --config " + test::source_dir() + "/configs/tiny_synthetic.yaml run.dir=" + run_dir + " " + extra;
}
// Every rank of `r` (0..n-1) printed the line `line(rank)`, with nnx-launch's prefix.
void expect_each_rank_printed(const test::RunResult& r, int n, const std::function<std::string(int)>& line) {
  for (int k = 0; k < n; ++k)
    EXPECT_NE(r.output.find("[rank " + std::to_string(k) + "] " + line(k)), std::string::npos) << r.output;
}
// The run resumed from a step of `rank0_folder` (rank 0's own local folder) no older than
// `at_least`, and rank 1 took that same step from its replica on rank 0. `rank0_output` and
// `rank1_output` hold each rank's lines: one nnx-launch's output twice (`prefixed`: each line
// carries its rank's prefix), or each host's own.
void expect_rank1_resumed_from_replica(const std::string& rank0_output, const std::string& rank1_output,
                                       const std::string& rank0_folder, int at_least, bool prefixed) {
  const std::string p0 = prefixed ? "\\[rank 0\\] " : "", p1 = prefixed ? "[rank 1] nnx-train: info: " : "";
  std::smatch m;
  ASSERT_TRUE(std::regex_search(rank0_output, m,
                                std::regex(p0 + "nnx-train: resumed from step (\\d+) \\(" + rank0_folder + "/")))
      << rank0_output;
  EXPECT_GE(std::stoi(m[1]), at_least) << rank0_output;
  EXPECT_NE(rank1_output.find(p1 + "checkpoint.local: this rank's step " + std::string(m[1]) +
                              " came from its replica on rank 0"),
            std::string::npos) << rank1_output;
}
}  // namespace

TEST(Launch, PrefixesLinesAndRunsCollectives) {
  test::TempDir dir;
  auto r = test::run(launch(3, helper() + " collectives " + dir.path().string()));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  expect_each_rank_printed(r, 3, [](int k) { return "collectives ok on rank " + std::to_string(k); });
}

// Gradients averaged while backward runs equal those averaged after it (2 and 3 ranks).
TEST(Launch, OverlappedGradientReductionEqualsReductionAfterBackward) {
  for (int ranks : {2, 3}) {
    test::TempDir dir;
    auto r = test::run(launch(ranks, helper() + " reducer " + dir.path().string()));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    expect_each_rank_printed(r, ranks, [](int k) { return "reducer ok on rank " + std::to_string(k) + ": "; });
  }
}

TEST(Launch, OneFailingRankStopsTheOthers) {
  auto t0 = std::chrono::steady_clock::now();
  auto r = test::run(test::bin("nnx-launch") + " --nproc 3 --grace-seconds 2 -- " + std::string("sh -c 'if [ $RANK = 1 ]; then echo bye; exit 3; fi; sleep 60'"));
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_LT(secs, 20.0) << "the other ranks were not stopped";
  EXPECT_NE(r.output.find("rank 1 failed with exit code 3"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("[rank 1] bye"), std::string::npos) << r.output;
  EXPECT_EQ(test::run(test::bin("nnx-launch") + " --nproc 0 -- true").exit_code, 2);
}

TEST(DistributedCheckpoint, EveryRankWritesItsShareAndH5pyReadsGlobalArrays) {
  test::TempDir dir;
  auto r = test::run(launch(3, helper() + " save " + dir.path().string()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* f : {"checkpoint.h5", "shard-0-of-3.h5", "shard-1-of-3.h5", "shard-2-of-3.h5", "_CHECKPOINT_METADATA"})
    EXPECT_TRUE(stdfs::exists(dir / "1" / f)) << f;
  EXPECT_EQ(read_metadata(dir / "1")["world_size"], 3);
  EXPECT_TRUE(verify(dir / "1").ok);
  // Writers balanced by bytes: each rank writes total / N within the largest tensor.
  int64_t total = 0, largest = 0;
  std::vector<int64_t> per_rank;
  for (int k = 0; k < 3; ++k) {
    H5File shard = H5File::open((dir / "1" / ("shard-" + std::to_string(k) + "-of-3.h5")).string());
    int64_t bytes = 0;
    for (const auto& d : list_item(shard, "params")) {
      bytes += d.nbytes;
      largest = std::max(largest, d.nbytes);
    }
    per_rank.push_back(bytes);
    total += bytes;
  }
  for (int k = 0; k < 3; ++k) EXPECT_LE(std::abs(per_rank[k] - total / 3), largest) << "rank " << k << " wrote " << per_rank[k];
  if (test::run("/usr/bin/python3 -c 'import h5py'").exit_code == 0) {
    auto py = test::run("cd / && /usr/bin/python3 -c \"import h5py,numpy as np; f=h5py.File('" + (dir / "1" / "checkpoint.h5").string() +
                        "'); d=f['params/w6']; assert d.is_virtual and (d[...]==np.arange(7000,dtype=np.float32)).all(); print('ok')\"");
    EXPECT_EQ(py.exit_code, 0) << py.output;
  }
  // A deleted shard is named before any value is read.
  stdfs::remove(dir / "1" / "shard-2-of-3.h5");
  auto v = verify(dir / "1");
  EXPECT_FALSE(v.ok);
  EXPECT_NE(v.problems[0].find("shard-2-of-3.h5' is missing"), std::string::npos) << v.problems[0];
}

TEST(DistributedCheckpoint, FailureOnOneRankFailsTheSaveEverywhere) {
  test::TempDir dir;
  auto r = test::run(launch(2, helper() + " rank1-fails " + dir.path().string()));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("[rank 0] save failed on rank 0: distributed save"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("rank 1: cannot save"), std::string::npos) << r.output;
  EXPECT_FALSE(stdfs::exists(dir / "1"));
  for (const auto& e : stdfs::directory_iterator(dir.path()))
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
}

// Errors keep their type across ranks: the same bad input (a tensor without data, on every rank)
// is an nnx::Error (exit code 2) at one rank and at two; before, two ranks made it an IOError (1).
TEST(DistributedCheckpoint, TheSameBadInputHasTheSameExitCodeAtOneRankAndAtTwo) {
  for (int n : {1, 2}) {
    test::TempDir dir;
    auto r = test::run(launch(n, helper() + " every-rank-fails " + dir.path().string()));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    expect_each_rank_printed(r, n, [](int k) { return "save failed on rank " + std::to_string(k) + " with exit code 2"; });
    EXPECT_FALSE(stdfs::exists(dir / "1"));
  }
}

// A preemption signal seen by one rank saves on every rank at the same step: the manager's
// should_save() agrees it across ranks.
TEST(DistributedCheckpoint, PreemptionSeenByOneRankSavesOnEveryRankAtTheSameStep) {
  test::TempDir dir;
  auto r = test::run(launch(2, helper() + " preemption " + dir.path().string()));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("[rank 0] saved step 5 on rank 0 (preempted 1, signal here 0)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("[rank 1] saved step 5 on rank 1 (preempted 1, signal here 1)"), std::string::npos) << r.output;
  CheckpointManagerOptions ro;
  ro.read_only = true;
  EXPECT_EQ(CheckpointManager(dir.path(), ro).all_steps(), (std::vector<int64_t>{5}));
}

TEST(DistributedCheckpoint, RanksSavingDifferentStepsFailInsteadOfMixingThem) {
  test::TempDir dir;
  auto r = test::run(launch(2, helper() + " different-steps " + dir.path().string()));
  EXPECT_NE(r.exit_code, 0) << r.output;
  for (int k = 0; k < 2; ++k)
    EXPECT_NE(r.output.find("[rank " + std::to_string(k) + "] save failed on rank " + std::to_string(k)), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("rank 1: this rank saves '" + (dir / "1").string() + "' while rank 0 saves '" + (dir / "2").string() + "'"),
            std::string::npos) << r.output;
  EXPECT_FALSE(stdfs::exists(dir / "1"));
  EXPECT_FALSE(stdfs::exists(dir / "2"));
  for (const auto& e : stdfs::directory_iterator(dir.path()))
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
}

TEST(DistributedCheckpoint, SaveEnteredBySomeRanksFailsWithinTheTimeout) {
  test::TempDir dir;
  auto t0 = std::chrono::steady_clock::now();
  auto r = test::run(launch(2, helper() + " partial-save " + dir.path().string()));
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(r.output.find("[rank 0] save failed on rank 0"), std::string::npos) << r.output;
  EXPECT_LT(secs, 30.0);
  EXPECT_FALSE(stdfs::exists(dir / "1"));
  for (const auto& e : stdfs::directory_iterator(dir.path()))  // the timed-out save left no tmp dir
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
}

// A rank that never arrives: the ranks that did fail within timeout_seconds (plus start-up), with
// the exit code of an operational failure (1), naming themselves. Each side alone: rank 0 (the
// store's server) waiting for rank 1, and rank 1 waiting for a rank 0 that never serves.
TEST(DataParallel, ARankThatNeverArrivesFailsTheOthersWithinTheTimeout) {
  test::TempDir dir;
  const int port = 20000 + static_cast<int>(::getpid() % 20000);
  for (int rank : {0, 1}) {
    const std::string env = "RANK=" + std::to_string(rank) + " WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" +
                            std::to_string(port + rank) + " ";
    auto t0 = std::chrono::steady_clock::now();
    auto r = test::run(env + train((dir / std::to_string(rank)).string(), "distributed.timeout_seconds=6 -q"));
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("rendezvous of rank " + std::to_string(rank) + " of 2"), std::string::npos) << r.output;
    EXPECT_GE(secs, 5.0) << r.output;   // it waited for the rank
    EXPECT_LT(secs, 11.0) << r.output;  // once: twice the timeout (12 s) is the fault this guards
  }
}

// ZeRO-3: a rank SIGKILLed inside a unit's forward, while the next unit's all-gather is in flight.
// The others fail on their own (no launcher stops them here) within the timeout (20 s), with
// exit code 1, and name the dead rank.
TEST(ZeroThree, ARankThatDiesDuringAnAllGatherIsNamedByEveryOtherRank) {
  test::TempDir dir;
  const int port = 20000 + static_cast<int>((::getpid() + 7919) % 20000);
  std::string script;
  for (int k = 0; k < 3; ++k)
    script += "(RANK=" + std::to_string(k) + " WORLD_SIZE=3 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) + " " +
              helper() + " die-in-gather " + dir.path().string() + " > " + (dir / ("out" + std::to_string(k))).string() +
              " 2>&1; echo $? > " + (dir / ("rc" + std::to_string(k))).string() + ") & ";
  const auto t0 = std::chrono::steady_clock::now();
  test::run("sh -c '" + script + "wait'");
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  auto slurp = [&](const std::string& name) {
    std::ifstream in(dir / name);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  EXPECT_EQ(slurp("rc1"), "137\n") << slurp("out1");  // 128 + SIGKILL
  for (int k : {0, 2}) {
    const std::string out = slurp("out" + std::to_string(k));
    EXPECT_EQ(slurp("rc" + std::to_string(k)), "1\n") << out;
    EXPECT_NE(out.find("step 2 done on rank " + std::to_string(k)), std::string::npos) << out;
    EXPECT_EQ(out.find("step 3 done"), std::string::npos) << out;
    EXPECT_NE(out.find("failed on rank " + std::to_string(k) + " of 3; rank 1 did not fail with it"), std::string::npos) << out;
  }
  EXPECT_LT(secs, 20.0);
}

// distributed.batch_stats: local: each rank keeps its own BatchNorm statistics; a persistent save
// writes rank 0's (broadcast into a copy at save), the local tier each rank's own.
TEST(DataParallel, LocalBatchStatsSaveRankZerosPersistentlyAndEachRanksOwnLocally) {
  if (!stdfs::is_directory("/dev/shm")) GTEST_SKIP() << "no /dev/shm";
  if (!stdfs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")) GTEST_SKIP() << "no Fashion-MNIST";
  test::TempDir dir, shm("/dev/shm");
  const std::string run = (dir / "run").string(), local = (shm / "local").string();
  const std::string cnn = test::bin("nnx-train") + " --config " + test::source_dir() + "/configs/fashion_mnist_cnn.yaml run.dir=" + run;
  auto r = test::run(launch(2, cnn + " distributed.batch_stats=local train.max_steps=6 checkpoint.save_interval_steps=6 "
                                     "checkpoint.async=false checkpoint.local.save_interval_steps=6 checkpoint.local.async=false "
                                     "checkpoint.local.replicas=0 checkpoint.local.directory=" + local +
                                     " eval.every_steps=0 eval.max_batches=1 -q --crash-after-step 6"));
  ASSERT_NE(r.exit_code, 0) << r.output;  // killed after step 6's saves: a finished run removes its local tier
  auto stats_at_6 = [](const stdfs::path& folder) {
    CheckpointManagerOptions o;
    o.read_only = true;
    CheckpointManager m(folder, o);
    H5File f = H5File::open((m.step_path(6) / kCheckpointFile).string());
    return read_state_untemplated(f, "batch_stats");
  };
  const State persistent = stats_at_6(stdfs::path(run) / "checkpoints");
  const State rank0 = stats_at_6(stdfs::path(local) / "rank-0-of-2"), rank1 = stats_at_6(stdfs::path(local) / "rank-1-of-2");
  ASSERT_EQ(persistent.size(), 4u);
  EXPECT_TRUE(persistent.equal(rank0)) << persistent.first_difference(rank0);
  EXPECT_FALSE(persistent.equal(rank1));  // rank 1 saw other examples
}

TEST(DataParallel, TwoRanksMatchOneRankWithTheSameGlobalBatch) {
  test::TempDir dir;
  const std::string common = "model.dropout=0 train.max_steps=30 checkpoint.async=false";
  auto one = test::run(train((dir / "one").string(), common + " train.batch_size=64"));
  ASSERT_EQ(one.exit_code, 0) << one.output;
  auto two = test::run(launch(2, train((dir / "two").string(), common + " train.batch_size=32")));
  ASSERT_EQ(two.exit_code, 0) << two.output;
  auto a = test::final_states((dir / "one").string()), b = test::final_states((dir / "two").string());
  // Within 1e-6: the mean of two 32-example gradient means vs one 64-example mean differ only
  // in float summation order.
  EXPECT_TRUE(a["params"].allclose(b["params"], 1e-6, 1e-6)) << a["params"].first_difference(b["params"]);
  EXPECT_TRUE(a["optimizer"].allclose(b["optimizer"], 1e-5, 1e-6));
  // Two 2-rank runs are bitwise identical.
  auto again = test::run(launch(2, train((dir / "two-again").string(), common + " train.batch_size=32")));
  ASSERT_EQ(again.exit_code, 0) << again.output;
  auto c = test::final_states((dir / "two-again").string());
  for (const auto& [item, st] : b) EXPECT_TRUE(st.equal(c.at(item))) << item;
}

TEST(DataParallel, SigkillOfTheLauncherThenBitExactResume) {
  test::TempDir dir;
  const std::string a = (dir / "a").string(), b = (dir / "b").string();
  const std::string o = "train.max_steps=2000 train.log_every=1 checkpoint.save_interval_steps=50 checkpoint.async=true";
  ASSERT_EQ(test::run(launch(2, train(a, o))).exit_code, 0);
  const std::string launcher = test::bin("nnx-launch"), trainer = test::bin("nnx-train");
  const std::string config = test::source_dir() + "/configs/tiny_synthetic.yaml", rd = "run.dir=" + b;
  const char* argv[] = {launcher.c_str(), "--nproc", "2", "--", trainer.c_str(), "--config", config.c_str(), rd.c_str(),
                        "train.max_steps=2000", "train.log_every=1", "checkpoint.save_interval_steps=50", "checkpoint.async=true", nullptr};
  pid_t pid;
  ASSERT_EQ(posix_spawn(&pid, launcher.c_str(), nullptr, nullptr, const_cast<char**>(argv), environ), 0);
  for (int i = 0; i < 400 && test::complete_jsonl_records(b + "/metrics.jsonl") < 160; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  ::kill(pid, SIGKILL);  // the ranks die with it (PR_SET_PDEATHSIG)
  ::waitpid(pid, nullptr, 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  auto resumed = test::run(launch(2, train(b, o)));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("resumed from step"), std::string::npos) << resumed.output;
  auto sa = test::final_states(a), sb = test::final_states(b);
  test::expect_equal_states(sa, sb);
  auto ma = test::read_jsonl(a + "/metrics.jsonl"), mb = test::read_jsonl(b + "/metrics.jsonl");
  ASSERT_EQ(ma.size(), mb.size());
  for (size_t i = 0; i < ma.size(); ++i) EXPECT_EQ(ma[i]["loss"].get<double>(), mb[i]["loss"].get<double>()) << i;
}

TEST(DataParallel, SigkillOfOneRankMidSaveStopsAllAndTheLatestCommittedStepRestores) {
  test::TempDir dir;
  const std::string b = (dir / "b").string();
  // Rank 1 dies right after save() of step 20 returned: its async write is in flight.
  auto r = test::run(launch(2, train(b, "checkpoint.save_interval_steps=10 checkpoint.async=true --crash-after-step 20 --crash-rank 1")));
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("rank 1 failed with signal 9"), std::string::npos) << r.output;
  CheckpointManagerOptions ro;
  ro.read_only = true;
  CheckpointManager m(stdfs::path(b) / "checkpoints", ro);
  auto latest = m.latest_step();
  ASSERT_TRUE(latest.has_value());
  EXPECT_TRUE(*latest == 10 || *latest == 20) << *latest;
  EXPECT_TRUE(verify(m.step_path(*latest)).ok);
  auto resumed = test::run(launch(2, train(b, "checkpoint.save_interval_steps=10")));
  EXPECT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("resumed from step " + std::to_string(*latest)), std::string::npos) << resumed.output;
}

TEST(DataParallel, FourRanksRestoreAtTwoAndThree) {
  test::TempDir dir;
  const std::string b = (dir / "b").string();
  const std::string o = "checkpoint.async=false checkpoint.save_interval_steps=10 train.batch_size=16";
  ASSERT_EQ(test::run(launch(4, train(b, o + " train.max_steps=20"))).exit_code, 0);
  // The global arrays that checkpoint.h5 presents equal what the 4 ranks wrote into their shards.
  auto saved = test::final_states(b);
  {
    CheckpointManagerOptions ro;
    ro.read_only = true;
    const auto step = CheckpointManager(stdfs::path(b) / "checkpoints", ro).step_path(20);
    std::map<std::string, State> shards;
    for (int r = 0; r < 4; ++r) {
      H5File f = H5File::open((step / ("shard-" + std::to_string(r) + "-of-4.h5")).string());
      for (const auto& item : list_items(f))
        for (const auto& [path, vs] : read_state_untemplated(f, item)) shards[item].insert(path, vs);
    }
    for (const auto& [item, st] : saved)
      for (const auto& [path, vs] : st) {
        if (vs.value.dim() == 0 || vs.value.numel() == 0) continue;  // scalars live in checkpoint.h5
        ASSERT_TRUE(shards[item].contains(path)) << item << "/" << path;
        EXPECT_TRUE(at::equal(vs.value, shards[item].at(path).value)) << item << "/" << path;
      }
    EXPECT_GT(saved.at("optimizer").size(), 1u);
  }
  auto at2 = test::run(launch(2, train(b, o + " train.max_steps=30")));
  EXPECT_EQ(at2.exit_code, 0) << at2.output;
  EXPECT_NE(at2.output.find("[rank 0] nnx-train: resumed from step 20"), std::string::npos) << at2.output;
  // 20 steps x 64 examples at 4 ranks = batch 20 of 32 at 2 ranks.
  EXPECT_NE(at2.output.find("data position epoch 0 batch 40"), std::string::npos) << at2.output;
  auto at3 = test::run(launch(3, train(b, o + " train.max_steps=40")));
  EXPECT_EQ(at3.exit_code, 0) << at3.output;
  EXPECT_NE(at3.output.find("resumed from step 30"), std::string::npos) << at3.output;
  // 40 x 32 = 1280 examples is not a multiple of 48: the position rounds down and says so.
  EXPECT_NE(at3.output.find("global batch changed 32 -> 48"), std::string::npos) << at3.output;
}

TEST(Launch, MaxRestartsRestartsEveryRankAndTheRunResumesBitExactly) {
  test::TempDir dir;
  const std::string a = (dir / "a").string(), b = (dir / "b").string();
  const std::string o = "checkpoint.save_interval_steps=10 checkpoint.async=false";
  ASSERT_EQ(test::run(launch(2, train(a, o))).exit_code, 0);
  // Rank 1 is SIGKILLed after the committed step 20; the launcher stops rank 0 and starts both
  // again, which resume from step 20 (where the crash flag no longer fires).
  const std::string restarting = test::bin("nnx-launch") + " --nproc 2 --max-restarts 1 -- ";
  auto r = test::run(restarting + train(b, o + " --crash-after-step 20 --crash-rank 1"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("rank 1 failed with signal 9"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("restarting all 2 ranks (restart 1 of 1)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("[rank 0] nnx-train: resumed from step 20"), std::string::npos) << r.output;
  auto sa = test::final_states(a), sb = test::final_states(b);
  test::expect_equal_states(sa, sb);
  // A program that always fails is started 1 + R times, then its exit code is the launcher's.
  auto f = test::run(test::bin("nnx-launch") + " --nproc 2 --max-restarts 2 --grace-seconds 1 -- /bin/false");
  EXPECT_EQ(f.exit_code, 1) << f.output;
  EXPECT_NE(f.output.find("(restart 2 of 2)"), std::string::npos) << f.output;
  EXPECT_EQ(f.output.find("(restart 3 of"), std::string::npos) << f.output;
  EXPECT_EQ(test::run(test::bin("nnx-launch") + " --nproc 2 --max-restarts -1 -- /bin/true").exit_code, 2);
}

TEST(Launch, StepTransfersAndPeerReplicasMoveCommittedStepsBitForBit) {
  test::TempDir dir;
  auto r = test::run(launch(2, helper() + " replicas " + dir.path().string()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  expect_each_rank_printed(r, 2, [](int k) { return "replicas ok on rank " + std::to_string(k); });
  expect_each_rank_printed(r, 2, [](int k) { return "agreement ok on rank " + std::to_string(k) + ": "; });
}

TEST(DataParallel, LocalTierResumesBothRanksFromTheirCommonNewestLocalStep) {
  if (!stdfs::is_directory("/dev/shm")) GTEST_SKIP() << "no /dev/shm";
  test::TempDir dir, shm("/dev/shm");
  const std::string a = (dir / "a").string(), b = (dir / "b").string(), local = (shm / "local").string();
  const std::string o = "checkpoint.save_interval_steps=20 checkpoint.async=false checkpoint.local.save_interval_steps=2 "
                        "checkpoint.local.async=false checkpoint.local.directory=" + local;
  ASSERT_EQ(test::run(launch(2, train(a, o))).exit_code, 0);
  auto killed = test::run(launch(2, train(b, o + " --crash-after-step 27 --crash-rank 1")));
  ASSERT_NE(killed.exit_code, 0) << killed.output;
  // Both ranks agree on the newest local step they both hold, 26 (the persistent tier has 20),
  // and each restores its own state (rank 0 prints; the states below show both agreed).
  auto r = test::run(launch(2, train(b, o)));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("[rank 0] nnx-train: resumed from step 26 (" + local + "/rank-0-of-2/26)"), std::string::npos) << r.output;
  auto sa = test::final_states(a), sb = test::final_states(b);
  test::expect_equal_states(sa, sb);
  // Without replicas, one rank's local folder wiped (a replaced host): no common local step,
  // the persistent tier.
  const std::string c = (dir / "c").string(), no_replicas = " checkpoint.local.replicas=0";
  ASSERT_NE(test::run(launch(2, train(c, o + no_replicas + " --crash-after-step 27 --crash-rank 1"))).exit_code, 0);
  std::error_code ec;
  stdfs::remove_all(stdfs::path(local) / "rank-1-of-2", ec);
  auto p = test::run(launch(2, train(c, o + no_replicas)));
  ASSERT_EQ(p.exit_code, 0) << p.output;
  EXPECT_NE(p.output.find("[rank 0] nnx-train: resumed from step 20 (" + c + "/checkpoints/20)"), std::string::npos) << p.output;
  auto sc = test::final_states(c);
  test::expect_equal_states(sa, sc);
  // Rank 1's newest local step truncated: it cannot restore it, so neither rank uses that step
  // (nothing partial is ever used), and both resume from the next older local step, 24, still
  // newer than the persistent tier's 20.
  const std::string d = (dir / "d").string();
  ASSERT_NE(test::run(launch(2, train(d, o + " --crash-after-step 27 --crash-rank 1"))).exit_code, 0);
  const auto file = stdfs::path(local) / "rank-1-of-2" / "26" / "checkpoint.h5";
  ASSERT_TRUE(stdfs::exists(file));
  stdfs::resize_file(file, stdfs::file_size(file) / 2);
  auto q = test::run(launch(2, train(d, o)));
  ASSERT_EQ(q.exit_code, 0) << q.output;
  EXPECT_NE(q.output.find("checkpoint.local: step 26 does not restore on every rank"), std::string::npos) << q.output;
  EXPECT_NE(q.output.find("[rank 0] nnx-train: resumed from step 24 (" + local + "/rank-0-of-2/24)"), std::string::npos) << q.output;
  auto sd = test::final_states(d);
  test::expect_equal_states(sa, sd);
}

// checkpoint.local.replicas (default 1): each rank's local steps are copied to the next rank. A
// rank whose whole folder is gone (a replaced host: its own steps and the replicas it held)
// gets its state back from its peer's replica; with both ranks' folders gone (two adjacent
// ranks at world size 2) the run resumes from the persistent tier. Every resume is bit-exact.
TEST(DataParallel, LocalTierReplicasRestoreAReplacedHostFromItsPeer) {
  if (!stdfs::is_directory("/dev/shm")) GTEST_SKIP() << "no /dev/shm";
  test::TempDir dir, shm("/dev/shm");
  const std::string a = (dir / "a").string(), b = (dir / "b").string(), local = (shm / "local").string();
  // Retention at its default (max_to_keep 2): replicas are sent beside ~1 ms steps and lag
  // behind the local saves, so each rank keeps the last steps offered to its peer as well.
  const std::string o = "checkpoint.save_interval_steps=20 checkpoint.async=false checkpoint.local.save_interval_steps=2 "
                        "checkpoint.local.async=false checkpoint.local.directory=" + local;
  ASSERT_EQ(test::run(launch(2, train(a, o))).exit_code, 0);
  const auto sa = test::final_states(a);
  ASSERT_NE(test::run(launch(2, train(b, o + " --crash-after-step 37 --crash-rank 1"))).exit_code, 0);
  // The replicas each rank holds of the other: committed and verified like its own steps.
  CheckpointManagerOptions ro;
  ro.read_only = true;
  ASSERT_FALSE(CheckpointManager(stdfs::path(local) / "rank-0-of-2" / "replicas" / "rank-1", ro).all_steps().empty());
  auto listed = test::run(test::bin("nnx-ckpt") + " list " + b + " --local " + local);
  EXPECT_NE(listed.output.find("local tier replica " + local + "/rank-0-of-2/replicas/rank-1: steps"), std::string::npos) << listed.output;
  EXPECT_NE(listed.output.find("local tier replica " + local + "/rank-1-of-2/replicas/rank-0: steps"), std::string::npos) << listed.output;
  auto verified = test::run(test::bin("nnx-ckpt") + " verify " + b + " --local " + local);
  EXPECT_EQ(verified.exit_code, 0) << verified.output;
  EXPECT_NE(verified.output.find("OK     " + local + "/rank-0-of-2/replicas/rank-1/"), std::string::npos) << verified.output;
  std::error_code ec;
  stdfs::remove_all(stdfs::path(local) / "rank-1-of-2", ec);
  auto r = test::run(launch(2, train(b, o)));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // The newest step that both ranks can get (rank 1's from rank 0's replica): at least the
  // persistent tier's 20 (steps 20-36 offer replicas; the crash hook waits for the one in flight).
  expect_rank1_resumed_from_replica(r.output, r.output, local + "/rank-0-of-2", 20, /*prefixed=*/true);
  auto sb = test::final_states(b);
  test::expect_equal_states(sa, sb);
  // Two adjacent ranks' folders gone: nobody holds their steps; the persistent tier.
  const std::string c = (dir / "c").string();
  ASSERT_NE(test::run(launch(2, train(c, o + " --crash-after-step 27 --crash-rank 1"))).exit_code, 0);
  stdfs::remove_all(stdfs::path(local) / "rank-0-of-2", ec);
  stdfs::remove_all(stdfs::path(local) / "rank-1-of-2", ec);
  auto p = test::run(launch(2, train(c, o)));
  ASSERT_EQ(p.exit_code, 0) << p.output;
  EXPECT_NE(p.output.find("[rank 0] nnx-train: resumed from step 20 (" + c + "/checkpoints/20)"), std::string::npos) << p.output;
  auto sc = test::final_states(c);
  test::expect_equal_states(sa, sc);
  EXPECT_FALSE(stdfs::exists(local)) << "a finished run keeps no local tier";
}

// ZeRO-1 with the local tier: each rank's local steps hold its own rows of the optimizer state
// as plain arrays (no sharding annotation: they are not pieces of a stored global array), its
// peer keeps a replica, and a resume from either is bit-exact.
TEST(ZeroOne, TheLocalTierKeepsEachRanksOptimizerRowsAndResumesBitExactly) {
  if (!stdfs::is_directory("/dev/shm")) GTEST_SKIP() << "no /dev/shm";
  test::TempDir dir, shm("/dev/shm");
  const std::string a = (dir / "a").string(), b = (dir / "b").string(), local = (shm / "local").string();
  const std::string o = "distributed.zero_stage=1 model.dtype=bfloat16 checkpoint.save_interval_steps=20 "
                        "checkpoint.async=false checkpoint.local.save_interval_steps=2 checkpoint.local.async=false "
                        "checkpoint.local.directory=" + local;
  ASSERT_EQ(test::run(launch(2, train(a, o))).exit_code, 0);
  const auto sa = test::final_states(a);
  ASSERT_NE(test::run(launch(2, train(b, o + " --crash-after-step 27 --crash-rank 1"))).exit_code, 0);
  CheckpointManagerOptions ro;
  ro.read_only = true;
  for (int r : {0, 1}) {
    CheckpointManager m(stdfs::path(local) / ("rank-" + std::to_string(r) + "-of-2"), ro);
    ASSERT_TRUE(m.latest_step()) << "rank " << r;
    H5File f = H5File::open((m.step_path(*m.latest_step()) / "checkpoint.h5").string());
    const auto full = sa.at("optimizer").at("mu/layers/1/kernel").value.size(0);
    for (const auto& d : list_item(f, "optimizer")) {
      EXPECT_EQ(d.sharding, "") << "rank " << r << " " << d.path;
      if (d.path == "mu/layers/1/kernel") {
        EXPECT_EQ(d.shape.at(0), shard_range(full, r, 2).size) << "rank " << r;
      }
    }
  }
  auto resumed = test::run(launch(2, train(b, o + " train.max_steps=30")));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("[rank 0] nnx-train: resumed from step 26 (" + local + "/rank-0-of-2/26)"), std::string::npos)
      << resumed.output;
  // Then rank 1's folder is gone: its rows come from rank 0's replica.
  ASSERT_NE(test::run(launch(2, train(b, o + " --crash-after-step 57 --crash-rank 1"))).exit_code, 0);
  std::error_code ec;
  stdfs::remove_all(stdfs::path(local) / "rank-1-of-2", ec);
  auto r = test::run(launch(2, train(b, o)));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // A local step no older than the persistent tier's 40 (steps 40-56 offer replicas).
  expect_rank1_resumed_from_replica(r.output, r.output, local + "/rank-0-of-2", 40, /*prefixed=*/true);
  const auto sb = test::final_states(b);
  test::expect_equal_states(sa, sb);
}

TEST(DataParallel, TwoRankRunResumesBitExactlyAndAtOtherWorldSizes) {
  test::TempDir dir;
  const std::string a = (dir / "a").string(), b = (dir / "b").string();
  const std::string o = "checkpoint.save_interval_steps=10 checkpoint.async=false";
  ASSERT_EQ(test::run(launch(2, train(a, o))).exit_code, 0);
  auto killed = test::run(launch(2, train(b, o + " --crash-after-step 25")));
  EXPECT_NE(killed.exit_code, 0);
  auto resumed = test::run(launch(2, train(b, o)));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("[rank 0] nnx-train: resumed from step 20"), std::string::npos) << resumed.output;
  auto sa = test::final_states(a), sb = test::final_states(b);
  test::expect_equal_states(sa, sb);
  // The 2-rank checkpoint restores at 1 and 3 ranks and training continues.
  auto at1 = test::run(train(b, o + " train.max_steps=70"));
  EXPECT_EQ(at1.exit_code, 0) << at1.output;
  EXPECT_NE(at1.output.find("resumed from step 60"), std::string::npos) << at1.output;
  auto at3 = test::run(launch(3, train(b, o + " train.max_steps=80")));
  EXPECT_EQ(at3.exit_code, 0) << at3.output;
  EXPECT_NE(at3.output.find("resumed from step 70"), std::string::npos) << at3.output;
  CheckpointManagerOptions ro;
  ro.read_only = true;
  EXPECT_EQ(read_metadata(CheckpointManager(stdfs::path(b) / "checkpoints", ro).step_path(80))["world_size"], 3);
}

TEST(ZeroOne, ShardedOptimizerStepsAsTheUnshardedOneAndSavesGlobalArrays) {
  for (int n : {2, 3, 4}) {  // 3 and 4 do not divide every param's rows
    test::TempDir dir;
    auto r = test::run(launch(n, helper() + " zero1 " + dir.path().string()));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    expect_each_rank_printed(r, n, [](int k) { return "zero1 ok on rank " + std::to_string(k); });
    EXPECT_TRUE(verify(dir / "1").ok);
  }
}

// ZeRO-3 (FullyShardedModel): MLP, CNN with BatchNorm and GPT with its tied embedding, fully
// sharded at 4, 3 and then 2 ranks, step within 1e-6 of ZeRO-0 at the same global batch for 50
// steps; each rank saves only its rows, checkpoint.h5 holds the global arrays, and the 2-rank
// run restores the 3-rank checkpoint into its own shards bitwise. At 4 ranks the MLP's last bias
// (3 rows) leaves rank 3 no rows of it.
TEST(ZeroThree, FullyShardedTrainingMatchesReplicatedAndReshardsAcrossWorldSizes) {
  test::TempDir dir;
  for (int n : {4, 3, 2}) {
    auto r = test::run(launch(n, helper() + " fsdp " + dir.path().string()));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    for (const char* type : {"MLP", "CNN", "GPT"})
      expect_each_rank_printed(r, n, [&](int k) { return std::string("fsdp ") + type + " ok on rank " + std::to_string(k); });
    EXPECT_TRUE(verify(dir / ("GPT-" + std::to_string(n))).ok);
  }
}

// nnx-train with distributed.zero_stage: 3 (the tiny MLP with dropout, 2 ranks): it trains as
// zero_stage 0 does (params within 1e-6 after 60 steps), resumes bit-exactly after a SIGKILL,
// and its checkpoints go on at 1 rank with zero_stage 0 and at 3 ranks with zero_stage 3.
TEST(ZeroThree, NnxTrainShardsResumesBitExactlyAndChangesStageAndWorldSize) {
  test::TempDir dir;
  const std::string a = (dir / "a").string(), b = (dir / "b").string(), c = (dir / "c").string();
  const std::string o = "checkpoint.save_interval_steps=10 checkpoint.async=false", z3 = " distributed.zero_stage=3";
  auto first = test::run(launch(2, train(a, o + z3)));
  ASSERT_EQ(first.exit_code, 0) << first.output;
  EXPECT_NE(first.output.find("ZeRO-3 (2 units)"), std::string::npos) << first.output;
  ASSERT_EQ(test::run(launch(2, train(c, o))).exit_code, 0);
  auto sa = test::final_states(a), sc = test::final_states(c);
  EXPECT_TRUE(sa.at("params").allclose(sc.at("params"), 0, 1e-6)) << sa.at("params").first_difference(sc.at("params"));
  EXPECT_NE(test::run(launch(2, train(b, o + z3 + " --crash-after-step 25 --crash-rank 1"))).exit_code, 0);
  auto resumed = test::run(launch(2, train(b, o + z3)));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("[rank 0] nnx-train: resumed from step 20"), std::string::npos) << resumed.output;
  auto sb = test::final_states(b);
  test::expect_equal_states(sa, sb);
  auto at1 = test::run(train(b, o + " train.max_steps=70"));
  EXPECT_EQ(at1.exit_code, 0) << at1.output;
  EXPECT_NE(at1.output.find("resumed from step 60"), std::string::npos) << at1.output;
  auto at3 = test::run(launch(3, train(b, o + z3 + " train.max_steps=80")));
  EXPECT_EQ(at3.exit_code, 0) << at3.output;
  EXPECT_NE(at3.output.find("resumed from step 70"), std::string::npos) << at3.output;
  EXPECT_TRUE(verify(stdfs::path(b) / "checkpoints" / "80").ok);
  // The local tier holds each rank's rows: after a SIGKILL at step 27 and rank 1's folder
  // wiped, the run resumes from a local step no older than the persistent 20, rank 1's rows from
  // its replica on rank 0, and ends bit-exactly where the uninterrupted run did.
  if (!stdfs::is_directory("/dev/shm")) GTEST_SKIP() << "no /dev/shm";
  test::TempDir shm("/dev/shm");
  const std::string d = (dir / "d").string(), local = (shm / "local").string();
  const std::string lo = o + z3 + " checkpoint.local.save_interval_steps=2 checkpoint.local.async=false"
                                  " checkpoint.local.directory=" + local;
  EXPECT_NE(test::run(launch(2, train(d, lo + " --crash-after-step 27 --crash-rank 1"))).exit_code, 0);
  std::error_code ec;
  stdfs::remove_all(stdfs::path(local) / "rank-1-of-2", ec);
  auto from_local = test::run(launch(2, train(d, lo)));
  ASSERT_EQ(from_local.exit_code, 0) << from_local.output;
  expect_rank1_resumed_from_replica(from_local.output, from_local.output, local + "/rank-0-of-2", 20, /*prefixed=*/true);
  auto sd = test::final_states(d);
  test::expect_equal_states(sa, sd);
}

// A checkpoint crosses 3 -> 2 -> 1 -> 2 ranks at zero_stage 3, 1, 0, 3: each hop resumes the last
// one's checkpoint, takes one step at learning rate 0 (params unchanged, bitwise) and saves, so
// the params each hop saves are the global arrays the 3-rank ZeRO-3 run saved, bitwise.
TEST(ZeroThree, ACheckpointCrossesThreeTwoOneTwoRanksAndStagesBitwise) {
  test::TempDir dir;
  const std::string run = (dir / "run").string(), o = "checkpoint.save_interval_steps=1 checkpoint.async=false";
  auto first = test::run(launch(3, train(run, o + " distributed.zero_stage=3 train.max_steps=10")));
  ASSERT_EQ(first.exit_code, 0) << first.output;
  const State saved = test::final_states(run).at("params");
  int step = 10;
  for (const auto& [ranks, stage] : std::vector<std::pair<int, int>>{{2, 1}, {1, 0}, {2, 3}}) {
    ++step;
    const std::string args = o + " optimizer.learning_rate=0 train.max_steps=" + std::to_string(step) +
                             " distributed.zero_stage=" + std::to_string(stage);
    auto r = test::run(ranks == 1 ? train(run, args) : launch(ranks, train(run, args)));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("resumed from step " + std::to_string(step - 1)), std::string::npos) << r.output;
    const auto now = test::final_states(run);
    EXPECT_TRUE(now.at("params").equal(saved)) << ranks << " ranks at zero_stage " << stage << ": "
                                              << now.at("params").first_difference(saved);
  }
}

// Gloo has no bfloat16: broadcasts and all-gathers move bf16 as 2-byte words, gradient sums run
// in float32. bf16 params with fp32 master weights train at 3 ranks, ZeRO-1 or not, bitwise alike.
TEST(ZeroOne, Bfloat16ParamsTrainAcrossRanksShardedOrNot) {
  test::TempDir dir;
  const std::string o = "model.dtype=bfloat16 checkpoint.async=false train.batch_size=16 train.max_steps=20";
  auto z0 = test::run(launch(3, train((dir / "z0").string(), o)));
  ASSERT_EQ(z0.exit_code, 0) << z0.output;
  auto z1 = test::run(launch(3, train((dir / "z1").string(), o + " distributed.zero_stage=1")));
  ASSERT_EQ(z1.exit_code, 0) << z1.output;
  auto a = test::final_states((dir / "z0").string()), b = test::final_states((dir / "z1").string());
  EXPECT_EQ(a.at("params").at("layers/1/kernel").value.scalar_type(), at::kBFloat16);
  EXPECT_TRUE(b.at("optimizer").contains("master/layers/1/kernel"));
  for (const auto& item : {"params", "optimizer"})
    EXPECT_TRUE(a.at(item).equal(b.at(item))) << item << ": " << a.at(item).first_difference(b.at(item));
}

// The format is a promise: a 2-rank save today writes the same files (datasets, attributes,
// virtual mappings) as the fixture an earlier version wrote (tests/data/checkpoints-v1).
TEST(FormatFixtures, ATwoRankSaveWritesTheSameFilesAsTheFixture) {
  if (test::run("/usr/bin/python3 -c 'import h5py'").exit_code != 0) GTEST_SKIP() << "python3-h5py is not installed";
  test::TempDir dir;
  auto r = test::run(launch(2, helper() + " fixture " + dir.path().string()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto fixture = test::tests_dir() / "data" / "checkpoints-v1" / "2-ranks";
  for (const std::string f : {"checkpoint.h5", "shard-0-of-2.h5", "shard-1-of-2.h5"}) {
    auto c = test::run("/usr/bin/python3 " + (test::tests_dir() / "checkpoint" / "compare_h5.py").string() + " " +
                       (fixture / f).string() + " " + (dir / "fixture" / f).string());
    EXPECT_EQ(c.exit_code, 0) << f << ": " << c.output;
  }
}

TEST(ZeroOne, ACorruptPieceFailsTheRestoreOnEveryRank) {
  test::TempDir dir;
  // Rank 0 reads only its own piece; rank 1's is corrupt: both must fail, naming it.
  auto r = test::run(launch(2, helper() + " corrupt-restore " + dir.path().string()));
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("[rank 1] restore failed on rank 1:"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("[rank 0] restore failed on rank 0: restore of '" + (dir / "1").string() +
                          "' failed on another rank: rank 1:"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("checksum mismatch"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("restore succeeded"), std::string::npos) << r.output;
}

TEST(ZeroOne, RanksThatDisagreeOnShardingFailTheSave) {
  test::TempDir dir;
  auto r = test::run(launch(2, helper() + " disagree " + dir.path().string()));
  EXPECT_NE(r.exit_code, 0) << r.output;
  for (int k = 0; k < 2; ++k)
    EXPECT_NE(r.output.find("[rank " + std::to_string(k) + "] save failed on rank " + std::to_string(k) +
                            ": distributed save of '" + (dir / "1").string() + "': the ranks' states do not agree"),
              std::string::npos) << r.output;
  EXPECT_FALSE(stdfs::exists(dir / "1"));
}

// ZeRO-1 training equals replicated-state training bitwise (no clipping), and its checkpoints
// restore at other world sizes (4 -> 3 -> 2 -> 1 -> 2, uneven shards) with the moments
// resharded: the two chains stay bitwise equal after every resume.
TEST(ZeroOne, TrainingMatchesReplicatedStateAndReshardsAcrossWorldSizes) {
  test::TempDir dir;
  const std::string a = (dir / "zero1").string(), b = (dir / "replicated").string();
  const std::string o = "checkpoint.async=false checkpoint.save_interval_steps=10 train.batch_size=16";
  int64_t steps = 0;
  for (int n : {4, 3, 2, 1, 2}) {
    steps += 10;
    const std::string m = o + " train.max_steps=" + std::to_string(steps);
    auto run = [&](const std::string& run_dir, const std::string& extra) {
      return test::run(n == 1 ? train(run_dir, m + extra) : launch(n, train(run_dir, m + extra)));
    };
    auto ra = run(a, " distributed.zero_stage=1"), rb = run(b, "");
    ASSERT_EQ(ra.exit_code, 0) << ra.output;
    ASSERT_EQ(rb.exit_code, 0) << rb.output;
    if (steps > 10) {
      EXPECT_NE(ra.output.find("resumed from step " + std::to_string(steps - 10)), std::string::npos) << ra.output;
    }
    if (n > 1) {
      EXPECT_NE(ra.output.find("ZeRO-1 optimizer state"), std::string::npos) << ra.output;
    }
    auto sa = test::final_states(a), sb = test::final_states(b);
    for (const auto& item : {"params", "optimizer"})
      EXPECT_TRUE(sa.at(item).equal(sb.at(item))) << "after " << steps << " steps at " << n << " ranks, " << item << ": "
                                                 << sa.at(item).first_difference(sb.at(item));
  }
  // The last (2-rank ZeRO-1) step stores the moments as sharded arrays stitched from the ranks' pieces.
  CheckpointManagerOptions ro;
  ro.read_only = true;
  H5File f = H5File::open((CheckpointManager(stdfs::path(a) / "checkpoints", ro).step_path(steps) / "checkpoint.h5").string());
  for (const auto& d : list_item(f, "optimizer")) {
    if (d.path != "step") {
      EXPECT_EQ(d.sharding.rfind("[\"data\"", 0), 0u) << d.path << " " << d.sharding;
    }
  }
}

TEST(DataParallel, SigtermToTheLauncherSavesOnEveryRankAndExitsZero) {
  test::TempDir dir;
  const std::string run_dir = (dir / "run").string();
  // SIGTERM to the launcher once training runs: it reaches every rank, which save and exit 0.
  ASSERT_EQ(test::sigterm_after_training_starts({test::bin("nnx-launch"), "--nproc", "2", "--", test::bin("nnx-train"), "--config",
                                                 test::source_dir() + "/configs/tiny_synthetic.yaml", "run.dir=" + run_dir,
                                                 "train.max_steps=100000000", "train.log_every=1",
                                                 "checkpoint.save_interval_steps=100000000"},
                                                run_dir),
            0);
  CheckpointManagerOptions ro;
  ro.read_only = true;
  CheckpointManager m(stdfs::path(run_dir) / "checkpoints", ro);
  ASSERT_TRUE(m.latest_step().has_value());
  EXPECT_EQ(read_metadata(m.step_path(*m.latest_step()))["world_size"], 2);
  EXPECT_TRUE(verify(m.step_path(*m.latest_step())).ok);
}

namespace {
// Two "hosts": network namespaces joined by a veth pair, each with its own address; removed
// when done. `skip` says why there are none (not root, no `ip netns`); `error` a failed step.
struct TwoHosts {
  std::string id = std::to_string(::getpid() % 100000);
  std::string a = "nnxa" + id, b = "nnxb" + id, va = "va" + id, vb = "vb" + id;
  std::string net = "10.231." + std::to_string(::getpid() % 250) + ".";
  std::string skip, error;
  TwoHosts() {
    auto sh = [](const std::string& c) { return test::run(c).exit_code == 0; };
    if (::geteuid() != 0 || !sh("ip netns add " + a)) {
      skip = "needs root and `ip netns` (CAP_SYS_ADMIN) to make two hosts";
      return;
    }
    for (const std::string& c : {"ip netns add " + b, "ip link add " + va + " type veth peer name " + vb,
                                 "ip link set " + va + " netns " + a + " && ip link set " + vb + " netns " + b,
                                 "ip -n " + a + " addr add " + net + "1/24 dev " + va + " && ip -n " + a + " link set " + va +
                                     " up && ip -n " + a + " link set lo up",
                                 "ip -n " + b + " addr add " + net + "2/24 dev " + vb + " && ip -n " + b + " link set " + vb +
                                     " up && ip -n " + b + " link set lo up"})
      if (error.empty() && !sh(c)) error = "failed: " + c;
  }
  ~TwoHosts() {
    if (skip.empty()) test::run("ip netns del " + a + "; ip netns del " + b);
  }
  // Rank 0 on host a (the master) and rank 1 on host b run `program(rank)` at once.
  std::pair<test::RunResult, test::RunResult> run(const std::function<std::string(int)>& program, int port) const {
    auto rank = [&](int r) {
      return "ip netns exec " + (r == 0 ? a : b) + " env RANK=" + std::to_string(r) + " WORLD_SIZE=2 LOCAL_RANK=0 MASTER_ADDR=" +
             net + "1 MASTER_PORT=" + std::to_string(port) + " GLOO_SOCKET_IFNAME=" + (r == 0 ? va : vb) + " " + program(r);
    };
    test::RunResult r0, r1;
    std::thread t0([&] { r0 = test::run(rank(0)); });
    std::thread t1([&] { r1 = test::run(rank(1)); });
    t0.join();
    t1.join();
    return {r0, r1};
  }
};
}  // namespace

// Two hosts, each running one rank, MASTER_ADDR on the first, both writing one shared
// checkpoint directory.
TEST(MultiHost, TwoNetworkNamespacesShareOneCheckpointDirectory) {
  TwoHosts hosts;
  if (!hosts.skip.empty()) GTEST_SKIP() << hosts.skip;
  ASSERT_TRUE(hosts.error.empty()) << hosts.error;
  test::TempDir dir;
  const std::string run_dir = (dir / "shared").string();
  auto [r0, r1] = hosts.run(
      [&](int) { return train(run_dir, "train.max_steps=30 checkpoint.save_interval_steps=10 distributed.timeout_seconds=60"); },
      29611);
  ASSERT_EQ(r0.exit_code, 0) << r0.output;
  ASSERT_EQ(r1.exit_code, 0) << r1.output;
  CheckpointManagerOptions ro;
  ro.read_only = true;
  CheckpointManager m(stdfs::path(run_dir) / "checkpoints", ro);
  ASSERT_EQ(m.latest_step(), 30);
  EXPECT_EQ(read_metadata(m.step_path(30))["world_size"], 2);
  EXPECT_TRUE(verify(m.step_path(30)).ok);
}

// Each host has its own local tier (its own directory, as its own /dev/shm would be). Rank 1 is
// killed, its host replaced (its folder gone); the relaunch sends rank 1 its state from the
// replica rank 0 kept, across the network, and the run ends bit-exact.
TEST(MultiHost, AReplacedHostResumesFromItsPeersReplicaOverTheNetwork) {
  TwoHosts hosts;
  if (!hosts.skip.empty()) GTEST_SKIP() << hosts.skip;
  ASSERT_TRUE(hosts.error.empty()) << hosts.error;
  test::TempDir dir;
  const std::string ref = (dir / "ref").string(), run_dir = (dir / "shared").string();
  // Local retention at its default (max_to_keep 2), with replicas lagging behind ~1 ms steps.
  const std::string o = "checkpoint.save_interval_steps=20 checkpoint.async=false checkpoint.local.save_interval_steps=2 "
                        "checkpoint.local.async=false distributed.timeout_seconds=60";
  const std::string root = dir.path().string();  // (a copy of the TempDir would remove it)
  auto program = [&](const std::string& extra) {
    return [=](int r) { return train(run_dir, o + " checkpoint.local.directory=" + root + "/host-" + std::to_string(r) + extra); };
  };
  ASSERT_EQ(test::run(launch(2, train(ref, o + " checkpoint.local.directory=" + (dir / "ref-local").string()))).exit_code, 0);
  auto [k0, k1] = hosts.run(program(" --crash-after-step 37 --crash-rank 1"), 29612);
  ASSERT_NE(k1.exit_code, 0) << k1.output;
  std::error_code ec;
  stdfs::remove_all(dir / "host-1", ec);
  auto [r0, r1] = hosts.run(program(""), 29613);
  ASSERT_EQ(r0.exit_code, 0) << r0.output;
  ASSERT_EQ(r1.exit_code, 0) << r1.output;
  expect_rank1_resumed_from_replica(r0.output, r1.output, root + "/host-0/rank-0-of-2", 20, /*prefixed=*/false);
  auto sa = test::final_states(ref), sb = test::final_states(run_dir);
  test::expect_equal_states(sa, sb);
}
