#include "nnx/checkpoint/io/fs.h"
#include "nnx/checkpoint/manager.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <cmath>
#include <condition_variable>
#include <fstream>
#include <random>
#include <thread>

#include "nnx/framework/error.h"
#include "nnx/checkpoint/format/directory.h"
#include "nnx/checkpoint/format/schema.h"
#include "nnx/checkpoint/verify.h"
#include "test_util.h"

extern char** environ;

using namespace nnx;
using namespace nnx::checkpoint;
namespace stdfs = std::filesystem;

namespace {
Composite item(float v) {
  State s;
  s.insert("w", {Param, at::full({16}, v), {}});
  return Composite{{"params", StandardSave(s)}};
}
CheckpointManagerOptions sync_opts() {
  CheckpointManagerOptions o;
  o.enable_async_checkpointing = false;
  o.handle_preemption_signals = false;
  return o;
}
float restored_value(const CheckpointManager& m, int64_t step) {
  State t;
  t.insert("w", {Param, at::empty({16}), {}});
  return m.restore(step, Composite{{"params", StandardRestore(t)}}).state("params").at("w").value[0].item<float>();
}
}  // namespace

// Retention as tables: (step, metric) saves in, kept steps out.
struct RetentionCase {
  std::string name;
  std::optional<int> max_to_keep;
  std::optional<int64_t> keep_period;
  bool best;
  std::string mode;
  std::vector<std::pair<int64_t, double>> saves;  // NaN metric = saved without metrics when < -1e300
  std::vector<int64_t> kept;
};

TEST(CheckpointManager, RetentionTables) {
  const double nan = std::nan("");
  const double none = -1e308;
  std::vector<RetentionCase> cases = {
      {"keep last 2", 2, {}, false, "min", {{1, 0}, {2, 0}, {3, 0}, {4, 0}}, {3, 4}},
      {"keep all", {}, {}, false, "min", {{1, 0}, {2, 0}, {3, 0}}, {1, 2, 3}},
      {"keep_period 2", 1, 2, false, "min", {{1, 0}, {2, 0}, {3, 0}, {4, 0}, {5, 0}}, {2, 4, 5}},
      // max_to_keep is the number kept (issue 17): the latest, then the best, then the newest
      // steps without a metric.
      {"best min + latest", 2, {}, true, "min", {{1, 0.5}, {2, 0.1}, {3, 0.9}, {4, 0.7}}, {2, 4}},
      {"max_to_keep 1 keeps the latest only", 1, {}, true, "min", {{1, 0.5}, {2, 0.1}, {3, 0.9}, {4, 0.7}}, {4}},
      {"best max 3", 3, {}, true, "max", {{1, 0.5}, {2, 0.1}, {3, 0.9}, {4, 0.7}, {5, 0.2}}, {3, 4, 5}},
      {"nan never best", 2, {}, true, "min", {{1, 0.5}, {2, nan}, {3, 0.9}}, {1, 3}},
      {"without metrics kept", 3, {}, true, "min", {{1, 0.5}, {2, none}, {3, 0.9}}, {1, 2, 3}},
      {"without metrics fill the places the best leave", 3, {}, true, "min",
       {{1, none}, {2, 0.5}, {3, none}, {4, none}}, {2, 3, 4}},
      {"max_to_keep 5 keeps 5", 5, {}, true, "min",
       {{10, none}, {20, 0.5}, {30, none}, {40, 0.4}, {50, none}, {60, 0.9}, {70, none}}, {20, 40, 50, 60, 70}},
  };
  for (const auto& c : cases) {
    test::TempDir dir;
    auto o = sync_opts();
    o.max_to_keep = c.max_to_keep;
    o.keep_period = c.keep_period;
    if (c.best) {
      o.best_fn = [](const nlohmann::json& m) { return m.at("loss").get<double>(); };
      o.best_mode = c.mode;
    }
    {
      CheckpointManager m(dir.path(), o);
      for (auto [step, metric] : c.saves) {
        nlohmann::json metrics;
        if (metric != none) metrics = {{"loss", std::isnan(metric) ? nlohmann::json(nullptr) : nlohmann::json(metric)}};
        if (std::isnan(metric)) metrics = {{"loss", "nan"}};
        EXPECT_TRUE(m.save(step, item(static_cast<float>(step)), metrics)) << c.name;
      }
      EXPECT_EQ(m.all_steps(), c.kept) << c.name;
    }
    // Bookkeeping survives a restart: a new manager sees the same steps and best.
    CheckpointManager again(dir.path(), o);
    EXPECT_EQ(again.all_steps(), c.kept) << c.name;
    EXPECT_EQ(again.latest_step(), c.kept.back()) << c.name;
  }
}

TEST(CheckpointManager, BestStepMetricsAndRestartRetention) {
  test::TempDir dir;
  auto o = sync_opts();
  o.max_to_keep = 3;  // the latest, the best, the next best
  o.best_fn = [](const nlohmann::json& m) { return m.at("loss").get<double>(); };
  {
    CheckpointManager m(dir.path(), o);
    m.save(1, item(1), {{"loss", 0.3}});
    m.save(2, item(2), {{"loss", 0.1}});
    EXPECT_EQ(m.best_step(), 2);
    EXPECT_EQ(m.metrics(1)["loss"], 0.3);
  }
  CheckpointManager m(dir.path(), o);
  m.save(3, item(3), {{"loss", 0.2}});
  m.save(4, item(4), {{"loss", 0.4}});
  EXPECT_EQ(m.all_steps(), (std::vector<int64_t>{2, 3, 4}));
  EXPECT_EQ(m.best_step(), 2);
  EXPECT_FLOAT_EQ(restored_value(m, 2), 2.0f);
}

TEST(CheckpointManager, IntervalsPrefixesAndNoOverwrite) {
  test::TempDir dir;
  auto o = sync_opts();
  o.save_interval_steps = 5;
  o.step_prefix = "ckpt";
  o.step_format_fixed_length = 6;
  CheckpointManager m(dir.path(), o);
  EXPECT_FALSE(m.save(3, item(3)));
  EXPECT_TRUE(m.save(5, item(5)));
  EXPECT_TRUE(stdfs::exists(dir / "ckpt_000005" / "checkpoint.h5"));
  EXPECT_FALSE(m.should_save(5));
  EXPECT_THROW(m.save(5, item(5), {}, /*force=*/true), Error);
  EXPECT_TRUE(m.save(7, item(7), {}, /*force=*/true));
  EXPECT_EQ(m.all_steps(), (std::vector<int64_t>{5, 7}));
  m.delete_step(5);
  EXPECT_EQ(m.all_steps(), (std::vector<int64_t>{7}));
  EXPECT_THROW(m.restore(5, item(0)), Error);
}

TEST(CheckpointManager, AsyncSavesCommitInBackground) {
  test::TempDir dir;
  auto o = sync_opts();
  o.enable_async_checkpointing = true;
  o.max_to_keep = 2;
  CheckpointManager m(dir.path(), o);
  for (int s = 1; s <= 5; ++s) EXPECT_TRUE(m.save(s, item(static_cast<float>(s))));
  m.wait_until_finished();
  EXPECT_EQ(m.all_steps(), (std::vector<int64_t>{4, 5}));
  EXPECT_FLOAT_EQ(restored_value(m, 5), 5.0f);
}

TEST(CheckpointManager, LockReadOnlyCleanupAndPreemption) {
  test::TempDir dir;
  stdfs::create_directories(dir / "9.tmp-123-abc");
  {
    CheckpointManager m(dir.path(), sync_opts());
    EXPECT_FALSE(stdfs::exists(dir / "9.tmp-123-abc"));  // leftovers removed at start-up
    EXPECT_THROW(CheckpointManager(dir.path(), sync_opts()), Error);  // second writer
    auto ro = sync_opts();
    ro.read_only = true;
    CheckpointManager reader(dir.path(), ro);  // readers take no lock
    m.save(1, item(1));
    EXPECT_EQ(reader.latest_step(), 1);
    // A read-only manager never writes: no save, no delete, each with a warning.
    EXPECT_FALSE(reader.should_save(2));
    EXPECT_FALSE(reader.save(2, item(2)));
    EXPECT_FALSE(reader.save(3, item(3), {}, /*force=*/true));
    reader.delete_step(1);
    EXPECT_EQ(reader.all_steps(), (std::vector<int64_t>{1}));
    EXPECT_EQ(m.all_steps(), (std::vector<int64_t>{1}));
    EXPECT_FALSE(stdfs::exists(dir / "2"));
  }
  auto o = sync_opts();
  o.handle_preemption_signals = true;
  CheckpointManager m(dir.path(), o);
  reset_preemption();
  EXPECT_FALSE(m.reached_preemption(1));
  ::raise(SIGTERM);
  EXPECT_TRUE(m.reached_preemption(2));
  EXPECT_TRUE(m.should_save(3));  // preemption forces a save off the interval
  reset_preemption();
  auto missing = sync_opts();
  missing.create = false;
  EXPECT_THROW(CheckpointManager(dir / "nope", missing), Error);
  auto bad = sync_opts();
  bad.max_to_keep = 0;
  EXPECT_THROW(CheckpointManager(dir.path(), bad), Error);
}

// A child process saving in a loop is killed with SIGKILL at random moments (during writes,
// commits and retention deletes). After each kill, every listed step verifies and the latest
// restores to the values of its step. NNX_CRASH_TRIALS sets the number of trials (default 30).
TEST(CheckpointManager, SigkillDuringSyncAndAsyncSavesNeverLosesTheLatestStep) {
  const char* env = std::getenv("NNX_CRASH_TRIALS");
  const int trials = env ? std::atoi(env) : 30;
  std::mt19937 rng(20261129);
  int restored = 0;
  for (int t = 0; t < trials; ++t) {
    test::TempDir dir;
    const std::string mode = t % 2 ? "async" : "sync";
    // Two rounds on the same directory: the second starts over leftovers of the first kill.
    for (int round = 0; round < 2; ++round) {
      std::string d = dir.path().string();
      const char* argv[] = {NNX_CRASH_HELPER, d.c_str(), mode.c_str(), "3", nullptr};
      pid_t pid;
      ASSERT_EQ(posix_spawn(&pid, NNX_CRASH_HELPER, nullptr, nullptr, const_cast<char**>(argv), environ), 0);
      // The first round waits for a first commit (start-up time varies a lot, e.g. under
      // sanitizers), then kills at a random moment of the following saves and deletes.
      if (round == 0) {
        for (int i = 0; i < 2000; ++i) {
          bool committed = false;
          for (const auto& e : stdfs::directory_iterator(dir.path()))
            committed = committed || stdfs::exists(e.path() / kMetadataFile);
          if (committed) break;
          std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(std::uniform_int_distribution<int>(0, 700)(rng)));
      ::kill(pid, SIGKILL);
      int status = 0;
      ::waitpid(pid, &status, 0);
      ASSERT_TRUE(WIFSIGNALED(status)) << "helper exited early with status " << status;
    }
    auto ro = sync_opts();
    ro.read_only = true;
    CheckpointManager m(dir.path(), ro);
    for (int64_t s : m.all_steps()) {
      auto r = verify(m.step_path(s));
      EXPECT_TRUE(r.ok) << "trial " << t << " step " << s << ": " << (r.problems.empty() ? "" : r.problems[0]);
    }
    if (auto latest = m.latest_step()) {
      State t;  // the helper's layout: 16 kernels filled with the step number
      for (int i = 0; i < 16; ++i) t.insert("layer" + std::to_string(i) + "/kernel", {Param, at::empty({256, 256}), {}});
      auto r = m.restore(*latest, Composite{{"params", StandardRestore(t)}, {"meta", JsonRestore()}});
      for (const auto& [p, vs] : r.state("params"))
        EXPECT_TRUE(at::equal(vs.value, at::full({256, 256}, static_cast<float>(*latest)))) << p;
      EXPECT_EQ(r.json_item("meta")["step"], *latest);
      ++restored;
    }
  }
  EXPECT_GT(restored, trials / 2) << "kills came too early to test anything";
  std::cout << "[ crash ] " << trials << " trials, " << 2 * trials << " SIGKILLs, " << restored
            << " restored latest steps, 0 lost\n";
}

TEST(CheckpointManager, FullDiskFailsCleanlyAndKeepsEarlierStepsIdentical) {
  test::TempDir dir;
  std::string d = dir.path().string();
  auto r = [&] {
    std::string cmd = std::string(NNX_CRASH_HELPER) + " '" + d + "' fullfs 1000000";
    FILE* p = ::popen(cmd.c_str(), "r");
    std::string out;
    char buf[512];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
    int status = ::pclose(p);
    return std::make_pair(WEXITSTATUS(status), out);
  }();
  EXPECT_EQ(r.first, 0) << r.second;
  EXPECT_NE(r.second.find("disk full?"), std::string::npos) << r.second;
  // The direct write path's error: the file, the dataset and where in the file.
  EXPECT_NE(r.second.find("dataset /params/w at file offset"), std::string::npos) << r.second;
  auto ro = sync_opts();
  ro.read_only = true;
  CheckpointManager m(dir.path(), ro);
  EXPECT_EQ(m.all_steps(), (std::vector<int64_t>{1}));
  EXPECT_TRUE(verify(m.step_path(1)).ok);  // sizes and checksums as committed
}

TEST(CheckpointManager, FallbackToNewestStepThatRestores) {
  test::TempDir dir;
  CheckpointManager m(dir.path(), sync_opts());
  for (int s = 1; s <= 3; ++s) m.save(s, item(static_cast<float>(s)));
  // Corrupt step 3's data and step 2's metadata.
  stdfs::resize_file(m.step_path(3) / kCheckpointFile, 100);
  { std::ofstream(m.step_path(2) / kMetadataFile, std::ios::trunc) << "{not json"; }
  State t;
  t.insert("w", {Param, at::empty({16}), {}});
  Composite args{{"params", StandardRestore(t)}};
  EXPECT_THROW(m.restore(std::nullopt, args), Error);
  auto r = m.restore_newest_valid(args);
  EXPECT_EQ(r.step, 1);
  ASSERT_EQ(r.skipped.size(), 2u);
  EXPECT_NE(r.skipped[0].find("step 3"), std::string::npos);
  EXPECT_NE(r.skipped[0].find("truncated"), std::string::npos) << r.skipped[0];
  EXPECT_NE(r.skipped[1].find("not valid JSON"), std::string::npos) << r.skipped[1];
  EXPECT_FLOAT_EQ(r.restored.state("params").at("w").value[0].item<float>(), 1.0f);
  EXPECT_EQ(r.skipped_steps, (std::vector<int64_t>{3, 2}));
  // Set aside, the corrupt steps leave the manager's steps (and its retention), keep their
  // bytes, and their step numbers can be saved anew.
  const auto truncated_size = stdfs::file_size(m.step_path(3) / kCheckpointFile);
  const stdfs::path aside3 = m.set_aside(3);
  m.set_aside(2);
  EXPECT_EQ(m.all_steps(), (std::vector<int64_t>{1}));
  EXPECT_NE(aside3.filename().string().find("3.unrestorable-"), std::string::npos) << aside3;
  EXPECT_EQ(stdfs::file_size(aside3 / kCheckpointFile), truncated_size);
  EXPECT_THROW(m.set_aside(3), Error);
  m.save(2, item(20.0f));
  m.save(3, item(30.0f));
  EXPECT_EQ(m.latest_step(), 3);
  EXPECT_FLOAT_EQ(m.restore(3, args).state("params").at("w").value[0].item<float>(), 30.0f);
  m.close();
  CheckpointManager reopened(dir.path(), sync_opts());  // start-up cleanup leaves them alone
  EXPECT_EQ(reopened.all_steps(), (std::vector<int64_t>{1, 2, 3}));
  EXPECT_TRUE(stdfs::exists(aside3));
}

TEST(CheckpointManager, ReaderDuringSavesAndDeletesSeesCompleteStepsOrClearErrors) {
  test::TempDir dir;
  auto o = sync_opts();
  o.max_to_keep = 2;
  CheckpointManager writer(dir.path(), o);
  writer.save(1, item(1));
  std::atomic<bool> stop{false};
  std::thread w([&] {
    for (int s = 2; s <= 60; ++s) writer.save(s, item(static_cast<float>(s)));
    stop = true;
  });
  auto ro = sync_opts();
  ro.read_only = true;
  CheckpointManager reader(dir.path(), ro);
  int ok = 0, clear_errors = 0;
  while (!stop) {
    auto latest = reader.latest_step();
    if (!latest) continue;
    try {
      float v = restored_value(reader, *latest);
      EXPECT_FLOAT_EQ(v, static_cast<float>(*latest));  // never mixed data
      ++ok;
    } catch (const Error& e) {
      ++clear_errors;  // the step was deleted between listing and reading
      const std::string m = e.what();
      EXPECT_NE(m.find(std::to_string(*latest)), std::string::npos) << m;
      // Deleted before the restore began, or while it read: said as such, never "corrupt".
      EXPECT_TRUE(m.find("no step " + std::to_string(*latest)) != std::string::npos ||
                  m.find("was deleted while being read (retention") != std::string::npos) << m;
    }
  }
  w.join();
  EXPECT_GT(ok, 0);
  std::cout << "[ concurrency ] " << ok << " restores during saves, " << clear_errors << " clear errors, 0 mixed\n";
}

// A real full disk: an 8 MiB ext4 image loop-mounted (root only; skipped otherwise).
TEST(CheckpointManager, FullLoopMountedFilesystemFailsCleanly) {
  test::TempDir dir;
  const std::string img = (dir / "disk.img").string(), mnt = (dir / "mnt").string();
  stdfs::create_directories(mnt);
  auto sh = [](const std::string& c) { return std::system((c + " > /dev/null 2>&1").c_str()) == 0; };
  if (::geteuid() != 0 || !sh("truncate -s 8M '" + img + "' && mkfs.ext4 -q -F '" + img + "' && mount -o loop '" + img + "' '" + mnt + "'"))
    GTEST_SKIP() << "needs root, mkfs.ext4 and loop devices to mount a small filesystem";
  struct Unmount {
    std::string m;
    ~Unmount() { std::system(("umount '" + m + "' > /dev/null 2>&1").c_str()); }
  } unmount{mnt};
  std::string before_sum;
  {
    CheckpointManager m(mnt + "/ckpt", sync_opts());
    State small;
    small.insert("w", {Param, at::ones({256 * 1024}), {}});  // 1 MiB
    m.save(1, Composite{{"params", StandardSave(small)}});
    before_sum = read_metadata(m.step_path(1))["files"]["checkpoint.h5"]["checksum"];
    State big;
    big.insert("w", {Param, at::ones({4 * 1024 * 1024}), {}});  // 16 MiB: does not fit
    try {
      m.save(2, Composite{{"params", StandardSave(big)}});
      FAIL() << "a save larger than the disk succeeded";
    } catch (const IOError& e) {
      EXPECT_NE(std::string(e.what()).find("disk full?"), std::string::npos) << e.what();
    }
    EXPECT_EQ(m.all_steps(), (std::vector<int64_t>{1}));
  }
  for (const auto& e : stdfs::directory_iterator(mnt + "/ckpt"))
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
  auto ro = sync_opts();
  ro.read_only = true;
  CheckpointManager m(mnt + "/ckpt", ro);
  auto v = verify(m.step_path(1));  // byte-identical: size and file checksum as committed
  EXPECT_TRUE(v.ok) << (v.problems.empty() ? "" : v.problems[0]);
  EXPECT_EQ(io::file_size_and_checksum(m.step_path(1) / kCheckpointFile).second, before_sum);
}

namespace {
CheckpointManagerOptions with_keep(PreservationPolicyPtr p) {
  auto o = sync_opts();
  o.preservation_policy = std::move(p);
  return o;
}
Composite big_item(float v) {  // 64 MB: an async save of it is still in flight when save() returns
  State s;
  s.insert("w", {Param, at::full({16 << 20}, v), {}});
  return Composite{{"params", StandardSave(s)}};
}
}  // namespace

// Preservation policies through a manager, across a restart: steps 1..5, a new manager, 6..10.
TEST(CheckpointManager, PreservationPoliciesAcrossRestarts) {
  auto loss = metric_key("loss");
  struct Row {
    const char* name;
    PreservationPolicyPtr policy;
    std::vector<int64_t> kept;
  };
  std::vector<Row> rows = {
      {"LatestN(2) | EveryNSteps(4)",
       std::make_shared<AnyPreservationPolicy>(
           std::vector<PreservationPolicyPtr>{std::make_shared<LatestN>(2), std::make_shared<EveryNSteps>(4)}),
       {4, 8, 9, 10}},
      // loss = |step - 3.5|: steps 3 and 4 are the best.
      {"BestN(2)", std::make_shared<BestN>(loss, "min", 2), {3, 4, 10}},
      {"CustomSteps(2, 7)", std::make_shared<CustomSteps>(std::set<int64_t>{2, 7}), {2, 7, 10}},
      // Saves within seconds of each other: one per hour keeps the first (and the latest).
      {"EveryNSeconds(3600)", std::make_shared<EveryNSeconds>(3600), {1, 10}},
      {"LatestDuration(1 day)", std::make_shared<LatestDuration>(86400), {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}},
  };
  for (const auto& r : rows) {
    test::TempDir dir;
    for (int session = 0; session < 2; ++session) {
      CheckpointManager m(dir.path(), with_keep(r.policy));
      for (int64_t s = 1 + 5 * session; s <= 5 + 5 * session; ++s)
        EXPECT_TRUE(m.save(s, item(static_cast<float>(s)), {{"loss", std::abs(static_cast<double>(s) - 3.5)}})) << r.name;
    }
    CheckpointManager m(dir.path(), with_keep(r.policy));
    EXPECT_EQ(m.all_steps(), r.kept) << r.name;
    EXPECT_FLOAT_EQ(restored_value(m, r.kept.front()), static_cast<float>(r.kept.front())) << r.name;
  }
  auto both = sync_opts();
  both.max_to_keep = 2;
  both.preservation_policy = std::make_shared<LatestN>(2);
  test::TempDir dir;
  EXPECT_THROW(CheckpointManager(dir.path(), both), Error);
}

TEST(CheckpointManager, SaveDecisionPolicies) {
  test::TempDir dir;
  auto o = sync_opts();
  o.save_decision_policy = std::make_shared<AnySavePolicy>(std::vector<SaveDecisionPolicyPtr>{
      std::make_shared<InitialSavePolicy>(), std::make_shared<SpecificStepsPolicy>(std::set<int64_t>{3, 7, 12})});
  {
    CheckpointManager m(dir.path(), o);
    for (int64_t s = 1; s <= 8; ++s) m.save(s, item(static_cast<float>(s)));
    EXPECT_EQ(m.all_steps(), (std::vector<int64_t>{1, 3, 7}));
  }
  CheckpointManager m(dir.path(), o);  // not the initial save any more
  for (int64_t s = 9; s <= 12; ++s) EXPECT_EQ(m.should_save(s), s == 12) << s;
}

// Continuous saving starts the next save once the previous committed: never two in flight.
TEST(CheckpointManager, ContinuousSavingNeverHasTwoSavesInFlight) {
  test::TempDir dir;
  auto o = sync_opts();
  o.enable_async_checkpointing = true;
  o.max_to_keep = 2;
  o.save_decision_policy = std::make_shared<ContinuousCheckpointingPolicy>();
  CheckpointManager m(dir.path(), o);
  int saves = 0;
  for (int64_t s = 1; s <= 300 && saves < 4; ++s) {
    if (!m.should_save(s)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));  // a training step
      continue;
    }
    EXPECT_FALSE(m.is_saving_in_progress()) << s;
    EXPECT_TRUE(m.save(s, big_item(static_cast<float>(s)), {}, /*force=*/true));
    EXPECT_FALSE(m.should_save(s + 1) && m.is_saving_in_progress()) << s;
    ++saves;
  }
  m.wait_until_finished();
  EXPECT_GE(saves, 2);
  EXPECT_EQ(m.all_steps().size(), 2u);
}

// Right after an async save(n), n is listed and restore(n) waits for it (Orbax's behaviour).
TEST(CheckpointManager, SaveInFlightIsListedAndRestoreWaitsForIt) {
  test::TempDir dir;
  auto o = sync_opts();
  o.enable_async_checkpointing = true;
  CheckpointManager m(dir.path(), o);
  ASSERT_TRUE(m.save(1, big_item(1)));
  ASSERT_TRUE(m.save(2, big_item(2)));
  EXPECT_EQ(m.all_steps(), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(m.latest_step(), 2);
  EXPECT_FALSE(m.should_save(2));
  State t;
  t.insert("w", {Param, at::empty({16 << 20}), {}});
  auto r = m.restore(std::nullopt, Composite{{"params", StandardRestore(t)}});
  EXPECT_FLOAT_EQ(r.state("params").at("w").value[5].item<float>(), 2.0f);
  EXPECT_FALSE(m.is_saving_in_progress());
}

namespace {
// Blocks retention until released, then fails it: a save whose failure the test controls.
class BlockingFailingPolicy : public PreservationPolicy {
 public:
  std::vector<bool> should_preserve(const std::vector<CheckpointInfo>& c, const PreservationContext&) const override {
    std::unique_lock<std::mutex> lock(mu);
    entered = true;
    cv.notify_all();
    cv.wait(lock, [&] { return released; });
    throw Error("retention failed on purpose");
    return std::vector<bool>(c.size(), true);
  }
  mutable std::mutex mu;
  mutable std::condition_variable cv;
  mutable bool entered = false;
  bool released = false;
};
}  // namespace

// wait_until_finished() from several threads at once: every waiter returns, each sees the error.
TEST(CheckpointManager, ConcurrentWaitersAllReturnAndEachSeesTheFailure) {
  test::TempDir dir;
  auto policy = std::make_shared<BlockingFailingPolicy>();
  auto o = with_keep(policy);
  o.enable_async_checkpointing = true;
  CheckpointManager m(dir.path(), o);
  m.save(1, item(1));
  m.save(2, item(2));  // retention runs with two steps: it blocks
  {
    std::unique_lock<std::mutex> lock(policy->mu);
    policy->cv.wait(lock, [&] { return policy->entered; });
  }
  std::atomic<int> started{0}, failed{0};
  std::vector<std::thread> waiters;
  for (int i = 0; i < 10; ++i)
    waiters.emplace_back([&] {
      ++started;
      try {
        m.wait_until_finished();
      } catch (const Error& e) {
        if (std::string(e.what()).find("retention failed on purpose") != std::string::npos) ++failed;
      }
    });
  while (started < 10) std::this_thread::yield();
  // Most likely all ten are inside the wait after this, but nothing depends on it: a waiter
  // that arrives after the release raises the same error (no waiter clears it), so the
  // assertions below hold for any interleaving; the pause only makes the concurrent case the
  // usual one.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  {
    std::lock_guard<std::mutex> lock(policy->mu);
    policy->released = true;
  }
  policy->cv.notify_all();
  for (auto& w : waiters) w.join();
  EXPECT_EQ(failed, 10);
  // The waiters did not clear it (issue 39: the loop's next call raised nothing after a
  // monitoring thread had waited): the saving thread's wait raises it, then it is cleared.
  EXPECT_THROW(m.wait_until_finished(), Error);
  m.wait_until_finished();
}

// reload() picks up steps another process added or removed.
TEST(CheckpointManager, ReloadSeesChangesMadeByAnotherProcess) {
  test::TempDir dir, other;
  CheckpointManager m(dir.path(), sync_opts());
  m.save(1, item(1));
  m.save(2, item(2));
  {
    CheckpointManager o(other.path(), sync_opts());
    o.save(7, item(7));
  }
  stdfs::copy(other / "7", dir / "7", stdfs::copy_options::recursive);
  stdfs::remove_all(dir / "1");
  EXPECT_EQ(m.all_steps(), (std::vector<int64_t>{1, 2}));  // cached: the directory is not listed
  m.reload();
  EXPECT_EQ(m.all_steps(), (std::vector<int64_t>{2, 7}));
  EXPECT_FLOAT_EQ(restored_value(m, 7), 7.0f);
  EXPECT_FALSE(m.should_save(5));
  EXPECT_TRUE(m.should_save(8));
}

// The Orbax tutorial's spellings: save(step, StandardSave(state)), restore(StandardRestore(
// abstract)) of the latest step, and a JsonSave object literal.
TEST(CheckpointManager, SingleItemSaveAndRestoreOfTheLatestStep) {
  test::TempDir dir;
  CheckpointManager m(dir.path(), sync_opts());
  State s;
  s.insert("linear/kernel", {Param, at::arange(6, at::kFloat).view({2, 3}), {}});
  EXPECT_TRUE(m.save(1, StandardSave(s)));
  EXPECT_TRUE(m.save(2, Composite{{"default", StandardSave(s)}, {"data", JsonSave({{"epoch", 3}, {"index", 17}})}}));
  State abstract;
  abstract.insert("linear/kernel", {Param, at::empty({2, 3}, at::TensorOptions().device(at::kMeta)), {}});
  EXPECT_TRUE(m.restore(StandardRestore(abstract)).equal(s));
  EXPECT_TRUE(m.restore(1, StandardRestore(abstract)).equal(s));
  EXPECT_EQ(m.restore(Composite{{"data", JsonRestore()}}).json_item("data")["index"], 17);
}

// A step removed by hand (an operator freeing space) is forgotten by retention instead of
// failing it, then and at every later save.
TEST(CheckpointManager, RetentionForgetsAStepRemovedByHand) {
  test::TempDir dir;
  auto o = sync_opts();
  o.max_to_keep = 2;
  CheckpointManager m(dir.path(), o);
  m.save(1, item(1));
  m.save(2, item(2));
  stdfs::remove_all(dir / "1");
  EXPECT_TRUE(m.save(3, item(3)));
  EXPECT_TRUE(m.save(4, item(4)));
  EXPECT_EQ(m.all_steps(), (std::vector<int64_t>{3, 4}));
}

// Save decisions see the save in flight: with an initial save and async saving, the step after
// the first is not "the first save" again.
TEST(CheckpointManager, SaveDecisionsSeeTheSaveInFlight) {
  test::TempDir dir;
  auto o = sync_opts();
  o.enable_async_checkpointing = true;
  o.save_decision_policy = std::make_shared<InitialSavePolicy>();
  CheckpointManager m(dir.path(), o);
  ASSERT_TRUE(m.save(1, big_item(1)));
  // Only while step 1 is in flight does this tell the fix apart (once committed, step 1 counts
  // either way); 64 MB take far longer to write than the next line to run.
  ASSERT_TRUE(m.is_saving_in_progress()) << "the 64 MB save committed before the check; the test proves nothing";
  EXPECT_FALSE(m.should_save(2));  // true before, while step 1 was in flight
  m.wait_until_finished();
  EXPECT_FALSE(m.should_save(2));
}

// A metric cache shared by two managers' policies (one policy object) never mixes their steps:
// values are keyed by step and save time.
TEST(CheckpointManager, ASharedBestNPolicyKeepsEachDirectorysOwnBest) {
  auto policy = std::make_shared<BestN>(metric_key("loss"), "min", 1, false);
  test::TempDir a, b;
  CheckpointManager ma(a.path(), with_keep(policy));
  CheckpointManager mb(b.path(), with_keep(policy));
  ma.save(1, item(1), {{"loss", 0.1}});
  mb.save(1, item(1), {{"loss", 0.9}});
  ma.save(2, item(2), {{"loss", 0.5}});
  mb.save(2, item(2), {{"loss", 0.2}});
  mb.save(3, item(3), {{"loss", 0.3}});
  EXPECT_EQ(ma.all_steps(), (std::vector<int64_t>{1, 2}));  // 1 best, 2 latest
  EXPECT_EQ(mb.all_steps(), (std::vector<int64_t>{2, 3}));  // 2 best (not step 1's 0.1 of a)
}
