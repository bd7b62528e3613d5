#include "nnx/trainer/trainer.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "nnx/checkpoint/checkpointer.h"
#include "nnx/checkpoint/format/json_item.h"
#include "nnx/checkpoint/format/state_reader.h"
#include "nnx/checkpoint/format/state_writer.h"
#include "nnx/checkpoint/io/checksum.h"
#include "nnx/checkpoint/io/fs.h"
#include "nnx/checkpoint/shard_planner.h"
#include "nnx/checkpoint/manager.h"
#include "nnx/checkpoint/preservation_policy.h"
#include "test_util.h"
#include "tools/run_util.h"

extern char** environ;

using namespace nnx;
using namespace nnx::checkpoint;
namespace stdfs = std::filesystem;

namespace {

std::string train_cmd(const std::string& config, const std::string& run_dir, const std::string& extra = "") {
  return test::bin("nnx-train") + " --config " + test::source_dir() + "/configs/" + config + " run.dir=" + run_dir + " " + extra;
}


// Kills a run with SIGKILL after `kill_step`, resumes it, and checks that the final params,
// batch stats, RNG streams, optimizer state and every logged loss equal the uninterrupted run.
void expect_bit_exact_resume(const std::string& config, const std::string& overrides, int64_t kill_step) {
  test::TempDir dir;
  const std::string a = (dir / "uninterrupted").string(), b = (dir / "interrupted").string();
  auto full = test::run(train_cmd(config, a, overrides));
  ASSERT_EQ(full.exit_code, 0) << full.output;
  auto killed = test::run(train_cmd(config, b, overrides + " --crash-after-step " + std::to_string(kill_step)));
  ASSERT_EQ(killed.exit_code, 128 + SIGKILL) << killed.output;
  auto resumed = test::run(train_cmd(config, b, overrides));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("resumed from step"), std::string::npos) << "no checkpoint was committed before the kill\n"
                                                                        << resumed.output;
  auto sa = test::final_states(a), sb = test::final_states(b);
  ASSERT_EQ(sa.size(), sb.size());
  for (const auto& [item, s] : sa) {
    ASSERT_TRUE(sb.count(item)) << item;
    EXPECT_TRUE(s.equal(sb.at(item))) << config << " item " << item << ": " << s.first_difference(sb.at(item));
  }
  auto ma = test::read_jsonl(a + "/metrics.jsonl"), mb = test::read_jsonl(b + "/metrics.jsonl");
  ASSERT_EQ(ma.size(), mb.size());
  for (size_t i = 0; i < ma.size(); ++i) {
    EXPECT_EQ(ma[i]["step"], mb[i]["step"]);
    EXPECT_EQ(ma[i]["loss"].get<double>(), mb[i]["loss"].get<double>()) << "step " << ma[i]["step"];  // bitwise
    EXPECT_EQ(ma[i].value("eval_loss", -1.0), mb[i].value("eval_loss", -1.0));
  }
}

bool have_fashion_mnist() { return stdfs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"); }

}  // namespace

TEST(Trainer, MlpResumesBitExactlyAfterSigkillSyncAndAsync) {
  std::mt19937 rng(7);
  for (const char* async : {"false", "true"}) {
    int64_t kill = std::uniform_int_distribution<int64_t>(24, 55)(rng);
    SCOPED_TRACE(std::string("async=") + async + " kill after step " + std::to_string(kill));
    // Async saves may still be in flight at the kill; the sync interval guarantees a commit.
    expect_bit_exact_resume("tiny_synthetic.yaml", std::string("checkpoint.save_interval_steps=10 checkpoint.async=") + async, kill);
  }
}

TEST(Trainer, MlpWithGradientAccumulationResumesBitExactly) {
  expect_bit_exact_resume("tiny_synthetic.yaml", "train.grad_accum_steps=3 checkpoint.save_interval_steps=10 checkpoint.async=false", 37);
}

TEST(Trainer, Bf16AutocastTrainsAndResumesBitExactly) {
  // train.autocast: the forward under CPU autocast (bf16 matmuls), master weights in fp32.
  expect_bit_exact_resume("tiny_synthetic.yaml", "train.max_steps=12 checkpoint.save_interval_steps=4 checkpoint.async=false train.autocast=bfloat16", 7);
  // It is in effect: the same run in fp32 ends with other params.
  test::TempDir dir;
  const std::string fp32 = (dir / "fp32").string(), bf16 = (dir / "bf16").string();
  ASSERT_EQ(test::run(train_cmd("tiny_synthetic.yaml", fp32, "train.max_steps=12")).exit_code, 0);
  ASSERT_EQ(test::run(train_cmd("tiny_synthetic.yaml", bf16, "train.max_steps=12 train.autocast=bfloat16")).exit_code, 0);
  EXPECT_FALSE(test::final_states(fp32).at("params").equal(test::final_states(bf16).at("params")));
}

TEST(Trainer, LocalTierResumesFromItsNewerStepAndIsRemovedWhenTheRunEnds) {
  // The tier in memory, as by default: on a disk its fsyncs take longer than these tiny steps,
  // and the busy saves would be skipped.
  if (!stdfs::is_directory("/dev/shm")) GTEST_SKIP() << "no /dev/shm";
  test::TempDir dir, shm("/dev/shm");
  const std::string local = (shm / "local").string();
  const std::string o = "checkpoint.save_interval_steps=20 checkpoint.async=false checkpoint.local.save_interval_steps=3 checkpoint.local.async=false "
                        "checkpoint.local.max_to_keep=2 checkpoint.local.directory=" + local;
  const std::string a = (dir / "a").string(), b = (dir / "b").string(), c = (dir / "c").string();
  auto full = test::run(train_cmd("tiny_synthetic.yaml", a, o));
  ASSERT_EQ(full.exit_code, 0) << full.output;
  EXPECT_FALSE(stdfs::exists(stdfs::path(local) / "rank-0-of-1")) << "a finished run removes its local tier";
  // SIGKILL after step 25: the persistent tier has step 20, the local tier 21 and 24.
  auto killed = test::run(train_cmd("tiny_synthetic.yaml", b, o + " --crash-after-step 25"));
  ASSERT_EQ(killed.exit_code, 128 + SIGKILL) << killed.output;
  int committed = 0;
  for (const auto& e : stdfs::directory_iterator(stdfs::path(local) / "rank-0-of-1"))
    committed += e.path().filename().string().find_first_not_of("0123456789") == std::string::npos;
  EXPECT_EQ(committed, 2) << "max_to_keep 2 bounds the tier";
  // nnx-ckpt sees both tiers.
  auto listed = test::run(test::bin("nnx-ckpt") + " list " + b + " --local " + local);
  EXPECT_NE(listed.output.find("local tier " + local + "/rank-0-of-1: steps 21 24"), std::string::npos) << listed.output;
  auto verified = test::run(test::bin("nnx-ckpt") + " verify " + b + " --local " + local);
  EXPECT_EQ(verified.exit_code, 0) << verified.output;
  EXPECT_NE(verified.output.find("OK     " + local + "/rank-0-of-1/24"), std::string::npos) << verified.output;
  auto one = test::run(test::bin("nnx-ckpt") + " verify " + b + " 24 --local " + local);  // a step of the local tier only
  EXPECT_EQ(one.exit_code, 0) << one.output;
  EXPECT_NE(one.output.find("OK     " + local + "/rank-0-of-1/24"), std::string::npos) << one.output;
  auto typo = test::run(test::bin("nnx-ckpt") + " list " + b + " --local " + local + "-typo");
  EXPECT_EQ(typo.exit_code, 2) << typo.output;
  EXPECT_NE(typo.output.find("--local '" + local + "-typo' holds no local tier"), std::string::npos) << typo.output;
  // The run's local tier at another world size: never read, said once, removed at the end.
  stdfs::create_directories(stdfs::path(local) / "rank-1-of-2" / "30");
  auto resumed = test::run(train_cmd("tiny_synthetic.yaml", b, o));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("resumed from step 24 (" + local + "/rank-0-of-1/24)"), std::string::npos) << resumed.output;
  EXPECT_NE(resumed.output.find("warning: checkpoint.local: '" + local + "/rank-1-of-2' is this run's local tier at another world size"),
            std::string::npos) << resumed.output;
  EXPECT_NE(resumed.output.find("local tier: 12 of 12 due saves written, 0 skipped"), std::string::npos) << resumed.output;
  EXPECT_FALSE(stdfs::exists(stdfs::path(local) / "rank-1-of-2")) << resumed.output;
  auto sa = test::final_states(a), sb = test::final_states(b);
  test::expect_equal_states(sa, sb);
  // A local tier that is gone (a replaced host): the persistent tier's step 20.
  auto killed_c = test::run(train_cmd("tiny_synthetic.yaml", c, o + " --crash-after-step 25"));
  ASSERT_EQ(killed_c.exit_code, 128 + SIGKILL) << killed_c.output;
  std::error_code ec;
  stdfs::remove_all(local, ec);
  auto from_persistent = test::run(train_cmd("tiny_synthetic.yaml", c, o));
  ASSERT_EQ(from_persistent.exit_code, 0) << from_persistent.output;
  EXPECT_NE(from_persistent.output.find("resumed from step 20 (" + c + "/checkpoints/20)"), std::string::npos) << from_persistent.output;
  auto sc = test::final_states(c);
  test::expect_equal_states(sa, sc);
}

// Killed after the last step's local save but before its persistent save committed (here the
// persistent step is removed after the kill, which leaves what such a kill leaves): the rerun
// has nothing to train, and writes that step to the persistent tier before it removes the
// local tier, which held its only copy. Two ranks: they agree on it, as saves are collective.
// (Stress.RandomSigkillsDuringTrainingTwoRanksLocalTier found it: the final step was lost.)
TEST(Trainer, ALastStepOnlyInTheLocalTierIsSavedToThePersistentTierBeforeTheTierGoes) {
  if (!stdfs::is_directory("/dev/shm")) GTEST_SKIP() << "no /dev/shm";
  test::TempDir dir, shm("/dev/shm");
  const std::string o = "train.max_steps=30 checkpoint.save_interval_steps=20 checkpoint.async=false checkpoint.local.save_interval_steps=3 "
                        "checkpoint.local.async=false checkpoint.local.directory=" + (shm / "local").string();
  const std::string launch = test::bin("nnx-launch") + " --nproc 2 -- ";
  const std::string a = (dir / "a").string(), b = (dir / "b").string();
  auto full = test::run(launch + train_cmd("tiny_synthetic.yaml", a, o));
  ASSERT_EQ(full.exit_code, 0) << full.output;
  auto killed = test::run(launch + train_cmd("tiny_synthetic.yaml", b, o + " --crash-after-step 30"));
  ASSERT_NE(killed.exit_code, 0) << killed.output;
  ASSERT_TRUE(stdfs::is_directory(stdfs::path(b) / "checkpoints" / "30")) << killed.output;
  stdfs::remove_all(stdfs::path(b) / "checkpoints" / "30");
  auto rerun = test::run(launch + train_cmd("tiny_synthetic.yaml", b, o));
  ASSERT_EQ(rerun.exit_code, 0) << rerun.output;
  EXPECT_NE(rerun.output.find("already at step 30"), std::string::npos) << rerun.output;
  EXPECT_NE(rerun.output.find("step 30 was only in the local tier; saved to " + b + "/checkpoints/30"), std::string::npos) << rerun.output;
  EXPECT_FALSE(stdfs::exists(shm / "local" / "rank-0-of-2")) << rerun.output;
  CheckpointManagerOptions ro;
  ro.read_only = true;
  EXPECT_EQ(CheckpointManager(stdfs::path(b) / "checkpoints", ro).latest_step(), std::optional<int64_t>(30));
  auto sa = test::final_states(a), sb = test::final_states(b);
  test::expect_equal_states(sa, sb);
  // A second rerun finds step 30 in the persistent tier: nothing to save.
  auto again = test::run(launch + train_cmd("tiny_synthetic.yaml", b, o));
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_EQ(again.output.find("was only in the local tier"), std::string::npos) << again.output;
}

TEST(Trainer, ALocalTierThatCannotBeWrittenIsAWarningNotAnError) {
  test::TempDir dir;
  // /proc takes no new folders, even for root: the tier is off, the run completes.
  auto r = test::run(train_cmd("tiny_synthetic.yaml", (dir / "run").string(),
                               "train.max_steps=10 checkpoint.local.save_interval_steps=2 checkpoint.local.directory=/proc/nnx-local"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("checkpoint.local: cannot use '/proc/nnx-local/rank-0-of-1'"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("done: step 10"), std::string::npos) << r.output;
}

// A local tier that fills up (a tmpfs of 100 KiB: two local steps of 40 KiB fit, the third
// does not) warns once, training goes on, the persistent tier is untouched: a kill and a
// resume use it (its step 20 is newer than the local tier's 2 and 4) and end bit-exact.
TEST(Trainer, AFullLocalTierIsOneWarningAndThePersistentTierGoesOn) {
  test::TempDir dir;
  const std::string mnt = (dir / "shm").string();
  stdfs::create_directories(mnt);
  if (::geteuid() != 0 || test::run("mount -t tmpfs -o size=100k nnx-full-shm " + mnt).exit_code != 0)
    GTEST_SKIP() << "needs root to mount a small tmpfs";
  struct Unmount {
    std::string at;
    ~Unmount() { test::run("umount " + at); }
  } unmount{mnt};
  const std::string o = "train.max_steps=30 checkpoint.save_interval_steps=10 checkpoint.async=false "
                        "checkpoint.local.save_interval_steps=2 checkpoint.local.async=false checkpoint.local.directory=" + mnt + "/l";
  auto ref = test::run(train_cmd("tiny_synthetic.yaml", (dir / "ref").string(), "train.max_steps=30 checkpoint.async=false"));
  ASSERT_EQ(ref.exit_code, 0) << ref.output;
  const std::string run = (dir / "run").string();
  auto killed = test::run(train_cmd("tiny_synthetic.yaml", run, o + " --crash-after-step 25"));
  ASSERT_NE(killed.exit_code, 0) << killed.output;
  const std::string warning = "checkpoint.local: the local save of step 6 failed (";
  ASSERT_NE(killed.output.find(warning), std::string::npos) << killed.output;
  EXPECT_EQ(killed.output.find("checkpoint.local: the local save", killed.output.find(warning) + 1), std::string::npos)
      << "one warning per streak of failures\n" << killed.output;
  auto r = test::run(train_cmd("tiny_synthetic.yaml", run, o));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("resumed from step 20 (" + run + "/checkpoints/20)"), std::string::npos) << r.output;
  auto a = test::final_states((dir / "ref").string()), b = test::final_states(run);
  for (const auto& [item, s] : a) EXPECT_TRUE(s.equal(b.at(item))) << item << ": " << s.first_difference(b.at(item));
}

TEST(Trainer, CnnWithBatchNormAndDropoutResumesBitExactlyMidEpochAndAtEpochBoundary) {
  if (!have_fashion_mnist()) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  // 640 examples / 64 = 10 batches per epoch: a checkpoint at step 10 sits on the epoch boundary,
  // one at 15 mid-epoch.
  const std::string o = "data.limit=640 train.max_steps=24 train.log_every=2 eval.every_steps=12 eval.max_batches=1 "
                        "checkpoint.save_interval_steps=5 checkpoint.async=false schedule.warmup_steps=2 model.channels=[4,8] model.hidden=16 threads=1";
  expect_bit_exact_resume("fashion_mnist_cnn.yaml", o, 10);  // resumes from the epoch boundary
  expect_bit_exact_resume("fashion_mnist_cnn.yaml", o, 17);  // resumes from mid-epoch step 15
}

TEST(Trainer, SigtermSavesAndRerunContinues) {
  test::TempDir dir;
  const std::string run_dir = (dir / "run").string();
  // Wait until it trains (metrics appear), then ask it to stop: it saves and exits 0.
  ASSERT_EQ(test::sigterm_after_training_starts({test::bin("nnx-train"), "--config", test::source_dir() + "/configs/tiny_synthetic.yaml",
                                                 "run.dir=" + run_dir, "train.max_steps=1000000",
                                                 "checkpoint.save_interval_steps=100000", "train.log_every=1"},
                                                run_dir),
            0);
  CheckpointManagerOptions o;
  o.read_only = true;
  auto latest = CheckpointManager(stdfs::path(run_dir) / "checkpoints", o).latest_step();
  ASSERT_TRUE(latest.has_value());
  EXPECT_GE(*latest, 5);
  auto again = test::run(train_cmd("tiny_synthetic.yaml", run_dir, "train.max_steps=" + std::to_string(*latest + 10)));
  EXPECT_EQ(again.exit_code, 0) << again.output;
  EXPECT_NE(again.output.find("resumed from step " + std::to_string(*latest)), std::string::npos) << again.output;
  EXPECT_NE(again.output.find("config changed since step"), std::string::npos);  // max_steps differs: a warning
}

TEST(Trainer, StructuralChangeOnResumeIsAnError) {
  test::TempDir dir;
  const std::string run_dir = (dir / "run").string();
  ASSERT_EQ(test::run(train_cmd("tiny_synthetic.yaml", run_dir, "train.max_steps=20")).exit_code, 0);
  auto r = test::run(train_cmd("tiny_synthetic.yaml", run_dir, "train.max_steps=40 model.hidden=[64]"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("model.hidden: [32] -> [64]"), std::string::npos) << r.output;
  // Found by comparing the checkpoint's GraphDef with the model the config builds.
  EXPECT_NE(r.output.find("the model changed since the checkpoint was written (its GraphDef differs)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("graphdef slots["), std::string::npos) << r.output;
  std::istringstream lines(r.output);
  for (std::string line; std::getline(lines, line);) EXPECT_LE(line.size(), 300u) << line.substr(0, 400);
  // The refused resume left the run's resolved config as the checkpoints have it.
  EXPECT_EQ(nlohmann::json::parse(nnx::checkpoint::io::read_file(run_dir + "/config.json"))["model"]["hidden"], nlohmann::json({32}));
  auto ok = test::run(train_cmd("tiny_synthetic.yaml", run_dir, "train.max_steps=40 optimizer.learning_rate=0.02"));
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_NE(ok.output.find("optimizer.learning_rate: 0.01 -> 0.02"), std::string::npos) << ok.output;
}

TEST(Trainer, NonFiniteLossIsSkippedOrStopsWithoutSaving) {
  test::TempDir dir;
  auto skip = test::run(train_cmd("tiny_synthetic.yaml", (dir / "skip").string(), "--inject-nonfinite-at-step 5"));
  EXPECT_EQ(skip.exit_code, 0) << skip.output;
  EXPECT_NE(skip.output.find("non-finite loss or gradient at step 5; step skipped"), std::string::npos);
  auto recs = test::read_jsonl((dir / "skip").string() + "/metrics.jsonl");
  EXPECT_EQ(recs.back()["skipped_steps"], 1);
  auto stop = test::run(train_cmd("tiny_synthetic.yaml", (dir / "stop").string(), "train.nonfinite=stop checkpoint.async=false --inject-nonfinite-at-step 25"));
  EXPECT_EQ(stop.exit_code, 1) << stop.output;
  CheckpointManagerOptions o;
  o.read_only = true;
  EXPECT_EQ(CheckpointManager(dir / "stop" / "checkpoints", o).latest_step(), 20);  // step 25 never saved
}

TEST(Trainer, CheckpointHoldsEveryItemAndVerifies) {
  test::TempDir dir;
  const std::string run_dir = (dir / "run").string();
  ASSERT_EQ(test::run(train_cmd("tiny_synthetic.yaml", run_dir)).exit_code, 0);
  auto list = test::run(test::bin("nnx-ckpt") + " list " + run_dir);
  EXPECT_EQ(list.exit_code, 0);
  EXPECT_NE(list.output.find("[latest]"), std::string::npos) << list.output;
  auto verify = test::run(test::bin("nnx-ckpt") + " verify " + run_dir);
  EXPECT_EQ(verify.exit_code, 0) << verify.output;
  auto show = test::run(test::bin("nnx-ckpt") + " show " + run_dir);
  for (const char* item : {"params:", "batch_stats:", "rngs:", "optimizer:", "json/data", "json/config", "json/metrics",
                           "json/trainer", "json/graphdef"})
    EXPECT_NE(show.output.find(item), std::string::npos) << item;
  // The documented h5py reader (docs/examples) reads it with h5py and numpy alone.
  if (test::run("/usr/bin/python3 -c 'import h5py'").exit_code == 0) {
    auto py = test::run("/usr/bin/python3 " + test::source_dir() + "/docs/examples/read_checkpoint_h5py.py " + run_dir);
    EXPECT_EQ(py.exit_code, 0) << py.output;
    EXPECT_NE(py.output.find("layers/1/kernel"), std::string::npos) << py.output;
  }
  CheckpointManagerOptions o;
  o.read_only = true;
  CheckpointManager m(stdfs::path(run_dir) / "checkpoints", o);
  EXPECT_EQ(m.all_steps(), (std::vector<int64_t>{40, 60}));  // max_to_keep: 2
  // A flipped byte is reported by verify with exit 1.
  auto h5 = m.step_path(60) / kCheckpointFile;
  {
    std::fstream f(h5, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(stdfs::file_size(h5) / 2));
    char c;
    f.read(&c, 1);
    f.seekp(static_cast<std::streamoff>(stdfs::file_size(h5) / 2));
    c ^= 0x40;
    f.write(&c, 1);
  }
  auto bad = test::run(test::bin("nnx-ckpt") + " verify " + m.step_path(60).string());
  EXPECT_EQ(bad.exit_code, 1) << bad.output;
  EXPECT_NE(bad.output.find("FAILED"), std::string::npos);
}

namespace {
// The row of `step` in `nnx-ckpt list`'s table ("" when none).
std::string list_row(const std::string& out, int64_t step) {
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);)
    if (line.rfind(std::to_string(step) + " ", 0) == 0) return line;
  return "";
}
}  // namespace

// nnx-ckpt list marks latest and best as the run's config defines them (issue 37: it marked the
// best by eval_loss whatever the run asked), shows broken steps as broken, and exits 1 then;
// a folder without checkpoints is bad input (exit 2), as for show and verify.
// A fallback resume sets the corrupt step aside: the run saves that step anew, retention never
// keeps the corrupt one over a good one, and the run ends as one that met no corruption.
TEST(Trainer, FallbackResumeSetsTheCorruptStepAsideAndEndsAsAnUncorruptedRun) {
  test::TempDir dir;
  const std::string a = (dir / "clean").string(), b = (dir / "corrupted").string();
  for (const std::string& run : {a, b}) ASSERT_EQ(test::run(train_cmd("tiny_synthetic.yaml", run)).exit_code, 0);
  const stdfs::path h5 = stdfs::path(b) / "checkpoints" / "60" / "checkpoint.h5";
  {
    std::fstream f(h5, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(stdfs::file_size(h5) / 2));
    const char c = static_cast<char>(f.get() ^ 0x5a);
    f.seekp(static_cast<std::streamoff>(stdfs::file_size(h5) / 2));
    f.put(c);
  }
  // list checks metadata and sizes, not checksums: step 60 lists, and the best step still
  // comes from the run's config, read from the newest step where it reads.
  auto listed = test::run(test::bin("nnx-ckpt") + " list " + b);
  EXPECT_NE(listed.output.find("best: by eval_loss (min), from the run's config"), std::string::npos) << listed.output;
  const std::string more = "train.max_steps=80 checkpoint.fallback_to_verified=true";  // keeps 2: 60 and 80
  ASSERT_EQ(test::run(train_cmd("tiny_synthetic.yaml", a, more)).exit_code, 0);
  auto fell_back = test::run(train_cmd("tiny_synthetic.yaml", b, more));
  ASSERT_EQ(fell_back.exit_code, 0) << fell_back.output;
  EXPECT_NE(fell_back.output.find("falling back to step 40"), std::string::npos) << fell_back.output;
  EXPECT_NE(fell_back.output.find("step 60 set aside as"), std::string::npos) << fell_back.output;
  auto verified = test::run(test::bin("nnx-ckpt") + " verify " + b + "/checkpoints");
  EXPECT_EQ(verified.exit_code, 0) << verified.output;  // every kept step is sound
  bool kept_aside = false;
  for (const auto& e : stdfs::directory_iterator(stdfs::path(b) / "checkpoints"))
    kept_aside = kept_aside || e.path().filename().string().rfind("60.unrestorable-", 0) == 0;
  EXPECT_TRUE(kept_aside) << "the corrupt step's bytes are kept for inspection";
  auto sa = test::final_states(a), sb = test::final_states(b);
  for (const auto& [item, st] : sa) EXPECT_TRUE(st.equal(sb.at(item))) << item << ": " << st.first_difference(sb.at(item));
}

TEST(Trainer, CkptListMarksTheRunsBestAndBrokenSteps) {
  test::TempDir dir;
  const std::string run_dir = (dir / "run").string();
  ASSERT_EQ(test::run(train_cmd("tiny_synthetic.yaml", run_dir,
                                "checkpoint.best_metric=eval_accuracy checkpoint.max_to_keep=4 checkpoint.async=false"))
                .exit_code,
            0);
  const stdfs::path ckpts = stdfs::path(run_dir) / "checkpoints";
  auto best_by = [&](const std::string& metric, const std::string& mode) {
    CheckpointManagerOptions o;
    o.read_only = true;
    o.best_fn = metric_key(metric);
    o.best_mode = mode;
    return *CheckpointManager(ckpts, o).best_step();
  };
  auto list = test::run(test::bin("nnx-ckpt") + " list " + run_dir);
  ASSERT_EQ(list.exit_code, 0) << list.output;
  EXPECT_NE(list_row(list.output, best_by("eval_accuracy", "max")).find("[best eval_accuracy]"), std::string::npos)
      << list.output;
  EXPECT_NE(list_row(list.output, 60).find("[latest]"), std::string::npos) << list.output;
  EXPECT_NE(list.output.find("best: by eval_accuracy (max), from the run's config"), std::string::npos) << list.output;
  auto by_loss = test::run(test::bin("nnx-ckpt") + " list " + run_dir + " --best-metric eval_loss");
  EXPECT_NE(list_row(by_loss.output, best_by("eval_loss", "min")).find("[best eval_loss]"), std::string::npos)
      << by_loss.output;
  // diff: two steps of one run; a wrong number of operands is one clear error, exit 2.
  EXPECT_EQ(test::run(test::bin("nnx-ckpt") + " diff " + run_dir + " 40 40").exit_code, 0);
  EXPECT_EQ(test::run(test::bin("nnx-ckpt") + " diff " + run_dir + " 20 60").exit_code, 1);
  // With a tolerance, floating-point tensors within it are "close" and do not count; integer
  // ones (the step, RNG counts) must still be equal.
  auto tolerant = test::run(test::bin("nnx-ckpt") + " diff " + run_dir + " 20 60 --atol 1e9");
  EXPECT_EQ(tolerant.exit_code, 1) << tolerant.output;
  EXPECT_NE(tolerant.output.find("close: params/"), std::string::npos) << tolerant.output;
  EXPECT_EQ(tolerant.output.find("differs: params/"), std::string::npos) << tolerant.output;
  EXPECT_NE(tolerant.output.find("differs: optimizer/step"), std::string::npos) << tolerant.output;
  EXPECT_NE(tolerant.output.find("within --atol 1e+09 --rtol 0)"), std::string::npos) << tolerant.output;
  EXPECT_EQ(test::run(test::bin("nnx-ckpt") + " diff " + run_dir + " 20 60 --atol -1").exit_code, 2);
  auto three = test::run(test::bin("nnx-ckpt") + " diff " + run_dir + " 20 40 60");
  EXPECT_EQ(three.exit_code, 2);
  EXPECT_NE(three.output.find("diff compares two checkpoints"), std::string::npos) << three.output;
  // A truncated file and an unreadable metadata file: rows marked BROKEN, exit 1.
  const auto h5 = ckpts / "40" / kCheckpointFile;
  stdfs::resize_file(h5, stdfs::file_size(h5) / 2);
  std::ofstream(ckpts / "20" / kMetadataFile, std::ios::trunc) << "{not json";
  auto broken = test::run(test::bin("nnx-ckpt") + " list " + run_dir);
  EXPECT_EQ(broken.exit_code, 1) << broken.output;
  EXPECT_NE(list_row(broken.output, 40).find("BROKEN: checkpoint file"), std::string::npos) << broken.output;
  EXPECT_NE(list_row(broken.output, 40).find("(truncated or replaced)"), std::string::npos) << broken.output;
  EXPECT_NE(list_row(broken.output, 20).find("BROKEN:"), std::string::npos) << broken.output;
  EXPECT_NE(list_row(broken.output, 60).find("[latest]"), std::string::npos) << broken.output;
  // Not a checkpoint directory, or none at all: exit 2 with the path named.
  stdfs::create_directories(dir / "empty");
  auto empty = test::run(test::bin("nnx-ckpt") + " list " + (dir / "empty").string());
  EXPECT_EQ(empty.exit_code, 2) << empty.output;
  EXPECT_NE(empty.output.find("holds no checkpoints"), std::string::npos) << empty.output;
  EXPECT_EQ(test::run(test::bin("nnx-ckpt") + " list " + (dir / "missing").string()).exit_code, 2);
}

// Saves every 10 steps, evaluation every 20, max_to_keep 5: step 10 has no eval_loss and is
// kept all the same (max_to_keep keeps 5 once 5 exist), and the run resumes from it.
TEST(Trainer, MaxToKeepKeepsStepsWithoutEvalMetricsAndResumesFromThem) {
  test::TempDir dir;
  const std::string run_dir = (dir / "run").string();
  const std::string o = "checkpoint.save_interval_steps=10 checkpoint.max_to_keep=5 checkpoint.async=false";
  auto r = test::run(train_cmd("tiny_synthetic.yaml", run_dir, o + " train.max_steps=20"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  {
    CheckpointManagerOptions ro;
    ro.read_only = true;
    CheckpointManager m(stdfs::path(run_dir) / "checkpoints", ro);
    EXPECT_EQ(m.all_steps(), (std::vector<int64_t>{10, 20}));
    EXPECT_FALSE(m.metrics(10).contains("eval_loss"));
  }
  auto back = test::run(train_cmd("tiny_synthetic.yaml", run_dir, o + " train.max_steps=15 --resume-from 10"));
  EXPECT_EQ(back.exit_code, 0) << back.output;
  EXPECT_NE(back.output.find("resumed from step 10"), std::string::npos) << back.output;
}

// checkpoint.save and checkpoint.keep lists drive nnx-train's saves and retention.
TEST(Trainer, SaveAndKeepPolicyListsFromTheConfig) {
  test::TempDir dir;
  const std::string run_dir = (dir / "run").string();
  auto r = test::run(train_cmd("tiny_synthetic.yaml", run_dir,
                               "train.max_steps=50 checkpoint.async=false checkpoint.save_interval_steps=null "
                               "checkpoint.max_to_keep=null 'checkpoint.save=[{specific_steps: [5, 25]}, {fixed_interval: 10}]' "
                               "'checkpoint.keep=[{latest_n: 2}, {custom_steps: [5]}, {every_n_steps: 20}]'"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  CheckpointManagerOptions ro;
  ro.read_only = true;
  CheckpointManager m(stdfs::path(run_dir) / "checkpoints", ro);
  // Saved 5, 10, 20, 25, 30, 40, 50; kept: the latest two, step 5, multiples of 20.
  EXPECT_EQ(m.all_steps(), (std::vector<int64_t>{5, 20, 40, 50}));
}

// A run.dir that cannot be created is a config error: exit 2, one line naming run.dir.
TEST(Trainer, UncreatableRunDirExitsTwoNamingIt) {
  auto r = test::run(train_cmd("tiny_synthetic.yaml", "/proc/nnx-no-such-dir/run", "train.max_steps=2"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("nnx-train: error: run.dir '/proc/nnx-no-such-dir/run' (override 'run.dir=/proc/nnx-no-such-dir/run')"),
            std::string::npos)
      << r.output;  // named as the command line's override, not as the YAML file's
}
