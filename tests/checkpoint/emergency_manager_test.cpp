// The multi-tier CheckpointManager on one rank (the 2-rank replicas: examples/multi_tier in
// tests/install_test.sh, and the trainer's tests): which tier a restore takes, and that close()
// never removes the only copy of the newest step.
#include "nnx/checkpoint/emergency/checkpoint_manager.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "nnx/checkpoint/emergency/local_tier.h"
#include "nnx/checkpoint/format/schema.h"
#include "nnx/checkpoint/manager.h"
#include "test_util.h"

using namespace nnx;
using namespace nnx::checkpoint;
namespace stdfs = std::filesystem;

namespace {

Composite state_at(int64_t step) {
  State s;
  s.insert("w", {Param, at::full({8, 8}, static_cast<float>(step)), {}});
  return Composite{{"params", StandardSave(s)}, {"data", JsonSave({{"step", step}})}};
}

Composite restore_args() {
  State s;
  s.insert("w", {Param, at::zeros({8, 8}), {}});
  return Composite{{"params", StandardRestore(s)}, {"data", JsonRestore()}};
}

emergency::CheckpointManagerOptions two_tiers(const stdfs::path& local) {
  emergency::CheckpointManagerOptions o;
  o.local.save_interval_steps = 2;
  o.local.directory = local.string();
  o.local.async = false;
  o.persistent.save_interval_steps = 10;
  o.persistent.enable_async_checkpointing = false;
  o.persistent.handle_preemption_signals = false;
  return o;
}

int64_t restored_step(const emergency::RestoredStep& r) { return r.restored.json_item("data")["step"]; }

}  // namespace

TEST(EmergencyCheckpointManager, RestoresTheNewerTierAndDiscardsANewerTimeline) {
  test::TempDir dir;
  {
    emergency::CheckpointManager m(dir / "persistent", two_tiers(dir / "local"));
    for (int64_t step = 1; step <= 13; ++step) m.save(step, state_at(step));
    EXPECT_EQ(m.latest_step(), std::optional<int64_t>(10));
  }  // killed after step 13: no close(), the local tier stays with steps 10 and 12
  emergency::CheckpointManager m(dir / "persistent", two_tiers(dir / "local"));
  auto r = m.restore(restore_args());
  ASSERT_TRUE(r.has_value());
  EXPECT_TRUE(r->from_local_tier);
  EXPECT_EQ(r->step, 12);
  EXPECT_EQ(restored_step(*r), 12);
  EXPECT_TRUE(r->restored.state("params").at("w").value.equal(at::full({8, 8}, 12.f)));
  // --resume-from 10 (the persistent tier): the local step 12 is of a timeline not continued.
  emergency::RestoreOptions at10;
  at10.step = 10;
  auto p = m.restore(restore_args(), at10);
  ASSERT_TRUE(p.has_value());
  EXPECT_FALSE(p->from_local_tier);
  EXPECT_EQ(restored_step(*p), 10);
  EXPECT_FALSE(stdfs::exists(m.local().step_path(12)));
}

// A local step that does not restore (truncated) is passed over for the next older local step,
// which is still newer than the persistent tier's latest; the bad step goes with the discarded
// newer timeline.
TEST(EmergencyCheckpointManager, ACorruptNewestLocalStepFallsBackToAnOlderLocalStep) {
  test::TempDir dir;
  {
    emergency::CheckpointManager m(dir / "persistent", two_tiers(dir / "local"));
    for (int64_t step = 1; step <= 15; ++step) m.save(step, state_at(step));
  }  // killed after step 15: local steps 12 and 14, persistent 10
  emergency::CheckpointManager m(dir / "persistent", two_tiers(dir / "local"));
  const stdfs::path file = m.local().step_path(14) / kCheckpointFile;
  ASSERT_TRUE(stdfs::exists(file));
  stdfs::resize_file(file, stdfs::file_size(file) / 2);
  auto r = m.restore(restore_args());
  ASSERT_TRUE(r.has_value());
  EXPECT_TRUE(r->from_local_tier);
  EXPECT_EQ(r->step, 12);
  EXPECT_TRUE(r->restored.state("params").at("w").value.equal(at::full({8, 8}, 12.f)));
  EXPECT_FALSE(stdfs::exists(m.local().step_path(14)));
  // Both local steps bad: the persistent tier's 10.
  emergency::CheckpointManager again(dir / "persistent2", two_tiers(dir / "local2"));
  for (int64_t step = 1; step <= 15; ++step) again.save(step, state_at(step));
  for (int64_t s : {12, 14}) stdfs::resize_file(again.local().step_path(s) / kCheckpointFile, 100);
  auto p = again.restore(restore_args());
  ASSERT_TRUE(p.has_value());
  EXPECT_FALSE(p->from_local_tier);
  EXPECT_EQ(p->step, 10);
}

TEST(EmergencyCheckpointManager, CloseSavesTheNewestStepThePersistentTierLacksAtItsOwnNumber) {
  test::TempDir dir;
  emergency::CheckpointManager m(dir / "persistent", two_tiers(dir / "local"));
  for (int64_t step = 1; step <= 13; ++step) m.save(step, state_at(step));  // the last not forced
  std::vector<int64_t> asked;
  const auto saved = m.close([&](int64_t step) {
    asked.push_back(step);
    return state_at(step);
  });
  EXPECT_EQ(saved, std::optional<int64_t>(13));
  EXPECT_EQ(asked, std::vector<int64_t>{13});
  CheckpointManagerOptions ro;
  ro.read_only = true;
  CheckpointManager persistent(dir / "persistent", ro);
  EXPECT_EQ(persistent.latest_step(), std::optional<int64_t>(13));
  EXPECT_EQ(persistent.restore(13, restore_args()).json_item("data")["step"], 13);
  EXPECT_FALSE(stdfs::exists(dir / "local" / "rank-0-of-1")) << "a closed run keeps no local tier";
}

TEST(EmergencyCheckpointManager, AResumeWithNothingToTrainReachesThePersistentTierOrKeepsTheLocalOne) {
  test::TempDir dir;
  {
    emergency::CheckpointManager m(dir / "persistent", two_tiers(dir / "local"));
    for (int64_t step = 1; step <= 4; ++step) m.save(step, state_at(step));
  }  // killed after step 4: the persistent tier is empty
  {
    emergency::CheckpointManager m(dir / "persistent", two_tiers(dir / "local"));
    auto r = m.restore(restore_args());
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->step, 4);
    EXPECT_EQ(m.close(), std::nullopt);  // no state given: the local tier is kept
    EXPECT_TRUE(stdfs::exists(m.local().step_path(4)));
  }
  emergency::CheckpointManager m(dir / "persistent", two_tiers(dir / "local"));
  auto r = m.restore(restore_args());
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->step, 4);
  EXPECT_EQ(m.close([](int64_t step) { return state_at(step); }), std::optional<int64_t>(4));
  EXPECT_EQ(m.latest_step(), std::optional<int64_t>(4));
  EXPECT_FALSE(stdfs::exists(dir / "local" / "rank-0-of-1"));
}
