// Deferred snapshots: save() records what to copy, the copy runs beside the caller's next steps,
// and every writer of saved state waits at the write fence, so the checkpoint holds the state
// as it was at save(), bitwise.
#include "nnx/checkpoint/io/host_snapshot.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>

#include <future>
#include <thread>

#include "nnx/checkpoint/async_checkpointer.h"
#include "nnx/checkpoint/handlers/registry.h"
#include "nnx/checkpoint/manager.h"
#include "nnx/framework/error.h"
#include "nnx/framework/graph.h"
#include "nnx/framework/layers.h"
#include "nnx/framework/write_fence.h"
#include "nnx/optim/optimizer.h"
#include "test_util.h"

using namespace nnx;
using namespace nnx::checkpoint;
using io::SnapshotTiming;

namespace {

constexpr int64_t kBig = (256 << 10) / 4;  // 256 KiB of float32: copied deferred

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }
bool stdfs_exists(const std::filesystem::path& p) { return std::filesystem::exists(p); }

// A model with every kind of state a training step writes: params and AdamW moments (the
// optimizer), BatchNorm running statistics (forward in training mode), RNG counters (dropout).
struct Trainee {
  Rngs rngs{std::map<std::string, uint64_t>{{"params", 0}, {"dropout", 1}}};
  std::shared_ptr<Sequential> model = std::make_shared<Sequential>();
  std::shared_ptr<optim::Optimizer> opt;

  Trainee() {
    model->push_back(std::make_shared<Linear>(128, 512, rngs));  // 256 KiB kernel
    model->push_back(std::make_shared<BatchNorm>(512, 0));
    model->push_back(std::make_shared<ReLU>());
    model->push_back(std::make_shared<Dropout>(0.5, rngs));
    model->push_back(std::make_shared<Linear>(512, 10, rngs));
    optim::AdamOptions o(1e-2);
    o.weight_decay = 0.1;
    opt = std::make_shared<optim::Optimizer>(model, std::vector<std::shared_ptr<optim::Transform>>{optim::adamw(o)});
  }
  void step(int64_t seed) {
    zero_grad(*model);
    at::Tensor x = at::randn({32, 128}, at::TensorOptions().dtype(at::kFloat)).mul_(double(seed % 7 + 1));
    model->forward(x).pow(2).mean().backward();
    opt->step();
  }
  // The items nnx-train saves: params, batch_stats, rngs, optimizer.
  Composite items() const {
    auto parts = state(*model).split({Param, BatchStat, RngState, Everything()});
    return Composite{{"params", StandardSave(parts[0])}, {"batch_stats", StandardSave(parts[1])},
                     {"rngs", StandardSave(parts[2])}, {"optimizer", StandardSave(state(*opt))}};
  }
  Composite templates() const {
    Composite out;
    const Composite saved = items();
    for (const auto& [name, a] : saved.items()) out.add(name, StandardRestore(a.get_if<StandardSave>()->state));
    return out;
  }
};

}  // namespace

TEST(WriteFence, PrepareWriteCompletesTheReadsOfTheSameStorageOnly) {
  struct Counting : PendingRead {
    int completed = 0;
    void complete() override { ++completed; }
  };
  at::Tensor t = at::zeros({8, 8});
  at::Tensor other = at::zeros({8});
  auto read = std::make_shared<Counting>();
  const size_t before = pending_read_count();
  add_pending_read(t, read);
  EXPECT_EQ(pending_read_count(), before + 1);
  prepare_write(other);
  EXPECT_EQ(read->completed, 0);
  prepare_write(t.narrow(0, 2, 3));  // a view of the same storage
  prepare_write(t.detach());
  EXPECT_EQ(read->completed, 2);
  Variable v(Param, t);
  v.mutable_value();
  EXPECT_EQ(read->completed, 3);
  remove_pending_read(t, read.get());
  EXPECT_EQ(pending_read_count(), before);
  prepare_write(t);
  EXPECT_EQ(read->completed, 3);
  remove_pending_read(t, read.get());  // absent: nothing happens
  add_pending_read(at::Tensor(), read);  // no storage: ignored
  EXPECT_EQ(pending_read_count(), before);
}

// Deterministic: nothing is copied before start(), so the writer at the fence makes the copy.
TEST(DeferredSnapshot, AWriterAtTheFenceCopiesFirstAndTheSnapshotKeepsTheOldValues) {
  at::Tensor big = at::randn({kBig});
  at::Tensor small = at::arange(16, at::kFloat);
  const at::Tensor big0 = big.clone(), small0 = small.clone();
  std::vector<at::Tensor> reuse;
  io::HostSnapshot snap(&reuse, SnapshotTiming::kDeferred);
  at::Tensor b = snap.copy(big, "p/big");
  at::Tensor s = snap.copy(small, "p/small");  // small: copied inside copy()
  EXPECT_TRUE(s.equal(small0));
  small.add_(1);  // no fence needed for it
  prepare_write(big);
  big.mul_(3);
  snap.start();
  snap.wait();
  EXPECT_TRUE(b.equal(big0));
  EXPECT_TRUE(s.equal(small0));
  EXPECT_EQ(snap.deferred_bytes(), size_t(kBig) * 4);
  EXPECT_EQ(pending_read_count(), 0u);
  ASSERT_EQ(reuse.size(), 2u);
  EXPECT_EQ(reuse[0].data_ptr(), b.data_ptr());  // kept for the next snapshot
}

TEST(DeferredSnapshot, AWriteThatSkipsTheFenceFailsTheSnapshotNamingTheTensor) {
  at::Tensor big = at::randn({kBig});
  io::HostSnapshot snap(nullptr, SnapshotTiming::kDeferred);
  snap.copy(big, "params/dense/kernel");
  big.add_(1);  // in place, without prepare_write: the version counter moves
  snap.start();
  try {
    snap.wait();
    FAIL() << "a torn snapshot was accepted";
  } catch (const Error& e) {
    EXPECT_TRUE(contains(e.what(), "'params/dense/kernel'")) << e.what();
    EXPECT_TRUE(contains(e.what(), "torn")) << e.what();
    EXPECT_TRUE(contains(e.what(), "mutable_value")) << e.what();
  }
  EXPECT_EQ(pending_read_count(), 0u);
}

TEST(DeferredSnapshot, AnAbandonedSnapshotWithdrawsItsFences) {
  at::Tensor big = at::randn({kBig});
  {
    io::HostSnapshot snap(nullptr, SnapshotTiming::kDeferred);
    snap.copy(big, "a");
    snap.copy(big.view({-1, 4}), "b");  // the same storage twice
    EXPECT_EQ(pending_read_count(), 2u);
  }
  EXPECT_EQ(pending_read_count(), 0u);
  prepare_write(big);  // returns at once: nothing pending
}

TEST(DeferredSnapshot, BackgroundCopiesReuseBuffersAcrossSnapshots) {
  State s;
  for (int i = 0; i < 6; ++i) s.insert("p" + std::to_string(i), {Param, at::randn({kBig + i}), {}});
  std::vector<at::Tensor> reuse;
  std::vector<void*> first;
  for (int round = 0; round < 2; ++round) {
    io::HostSnapshot snap(&reuse, SnapshotTiming::kDeferred);
    Composite copy = snapshot_items(Composite{{"s", StandardSave(s)}}, snap);
    snap.start();
    snap.wait();
    const State& c = copy.items()[0].second.get_if<StandardSave>()->state;
    EXPECT_TRUE(c.equal(s)) << c.first_difference(s);
    std::vector<void*> ptrs;
    for (const auto& [p, vs] : c) ptrs.push_back(vs.value.data_ptr());
    if (round == 0) first = ptrs;
    else EXPECT_EQ(ptrs, first);
    for (auto& [p, vs] : s) vs.value.add_(1);
  }
}

// Issue 19's bitwise contract: every kind of state is written right after save(); the committed
// checkpoint equals a synchronous save of the state at save time.
TEST(DeferredSnapshot, TheCheckpointHoldsTheStateAtSaveTimeWhateverTrainingWritesNext) {
  test::TempDir dir;
  Trainee t;
  t.step(1);  // moments and statistics away from their initial values
  for (int round = 0; round < 3; ++round) {
    const std::string ref = "sync-" + std::to_string(round), def = "deferred-" + std::to_string(round);
    Checkpointer().save(dir / ref, t.items());
    AsyncCheckpointer ck;
    ck.snapshot_timing = SnapshotTiming::kDeferred;
    ck.save(dir / def, t.items());
    t.step(round + 2);  // AdamW update, BatchNorm statistics, dropout draws
    {
      c10::NoGradGuard no_grad;
      for (auto& [path, var] : t.model->named_variables())
        if (var.kind() == Param) var.mutable_value().mul_(1.5);  // a user's in-place write
    }
    ck.wait_until_finished();
    Restored a = Checkpointer().restore(dir / ref, t.templates());
    Restored b = Checkpointer().restore(dir / def, t.templates());
    for (const std::string item : {"params", "batch_stats", "rngs", "optimizer"}) {
      EXPECT_TRUE(a.state(item).equal(b.state(item))) << item << ": " << a.state(item).first_difference(b.state(item));
      EXPECT_FALSE(a.state(item).empty()) << item;
    }
    const State now = state(*t.model, Param);
    EXPECT_FALSE(now.equal(a.state("params")));  // the writes happened
  }
  EXPECT_EQ(pending_read_count(), 0u);
}

TEST(DeferredSnapshot, ManagerSavesDeferredAndRestoresBitwise) {
  test::TempDir dir;
  Trainee t;
  t.step(1);
  CheckpointManagerOptions o;
  o.snapshot_timing = SnapshotTiming::kDeferred;
  o.handle_preemption_signals = false;
  State expected;
  {
    CheckpointManager m(dir.path(), o);
    ASSERT_TRUE(m.save(1, t.items()));
    expected = state(*t.opt).clone();
    t.step(2);
    m.wait_until_finished();
    EXPECT_TRUE(m.restore(1, t.templates()).state("optimizer").equal(expected));
  }
}

namespace {

// An item kind whose save blocks until the test opens its gate: a save "still being written".
struct GateSave {
  std::shared_future<void> open;
  bool fail = false;  // the save fails once the gate opens
};
struct GateRestore {};
class GateHandler : public ItemHandler {
 public:
  std::string kind() const override { return "test_gate"; }
  io::PendingWrites save(const SaveContext&, const std::string&, const ItemArgs& args) const override {
    args.get_if<GateSave>()->open.wait();
    NNX_CHECK(!args.get_if<GateSave>()->fail, "the gate's save failed on purpose");
    return {};
  }
  void restore(const RestoreContext&, const std::string&, const ItemArgs&, Restored&) const override {}
  nlohmann::json describe(const H5File&, const std::string&) const override { return nlohmann::json::object(); }
};

void register_gate_once() {
  static bool done = [] {
    register_item_handler<GateSave, GateRestore>(std::make_shared<GateHandler>());
    return true;
  }();
  (void)done;
}

// Opens `gate` 50 ms from now, while the caller blocks in a save that waits for the gated one.
std::thread open_later(std::promise<void>& gate) {
  return std::thread([&gate] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    gate.set_value();
  });
}

}  // namespace

TEST(BusyPolicy, SkipLeavesOutSavesWhileThePreviousIsWrittenAndWaitWaits) {
  register_gate_once();
  State s;
  s.insert("w", {Param, at::arange(4, at::kFloat), {}});
  for (BusyPolicy policy : {BusyPolicy::kSkip, BusyPolicy::kWait}) {
    test::TempDir dir;
    CheckpointManagerOptions o;
    o.busy_policy = policy;
    o.handle_preemption_signals = false;
    CheckpointManager m(dir.path(), o);
    std::promise<void> gate;
    ASSERT_TRUE(m.save(1, Composite{{"gate", GateSave{gate.get_future().share()}}, {"s", StandardSave(s)}}));
    ASSERT_TRUE(m.is_saving_in_progress());
    if (policy == BusyPolicy::kSkip) {
      EXPECT_FALSE(m.save(2, StandardSave(s)));  // skipped: step 1 is still being written
      gate.set_value();
      m.wait_until_finished();
      EXPECT_TRUE(m.save(3, StandardSave(s)));  // nothing in flight: saved
      m.wait_until_finished();
      EXPECT_EQ(m.all_steps(), (std::vector<int64_t>{1, 3}));
    } else {
      std::thread opener = open_later(gate);
      EXPECT_TRUE(m.save(2, StandardSave(s)));  // waits for step 1, then saves
      opener.join();
      m.wait_until_finished();
      EXPECT_EQ(m.all_steps(), (std::vector<int64_t>{1, 2}));
    }
  }
}

TEST(BusyPolicy, AForcedSaveIsNeverSkipped) {
  register_gate_once();
  test::TempDir dir;
  State s;
  s.insert("w", {Param, at::arange(4, at::kFloat), {}});
  CheckpointManagerOptions o;
  o.busy_policy = BusyPolicy::kSkip;
  o.save_interval_steps = 1000;
  o.handle_preemption_signals = false;
  CheckpointManager m(dir.path(), o);
  std::promise<void> gate;
  ASSERT_TRUE(m.save(1, Composite{{"gate", GateSave{gate.get_future().share()}}}, {}, /*force=*/true));
  std::thread opener = open_later(gate);
  EXPECT_TRUE(m.save(7, StandardSave(s), {}, /*force=*/true));  // the last step's save: waits
  opener.join();
  m.wait_until_finished();
  EXPECT_EQ(m.all_steps(), (std::vector<int64_t>{1, 7}));
}

TEST(BusyPolicy, SecondBufferSavesAtOnceAndCommitsInOrder) {
  register_gate_once();
  test::TempDir dir;
  State s;
  s.insert("w", {Param, at::arange(kBig, at::kFloat), {}});
  CheckpointManagerOptions o;
  o.busy_policy = BusyPolicy::kSecondBuffer;
  o.snapshot_timing = SnapshotTiming::kDeferred;
  o.handle_preemption_signals = false;
  CheckpointManager m(dir.path(), o);
  std::promise<void> gate;
  ASSERT_TRUE(m.save(1, Composite{{"gate", GateSave{gate.get_future().share()}}, {"s", StandardSave(s)}}));
  const State at2 = s.clone();
  ASSERT_TRUE(m.save(2, Composite{{"s", StandardSave(s)}}));  // returns with step 1 still being written
  prepare_write(s.at("w").value);
  s.at("w").value.add_(1);
  EXPECT_EQ(m.all_steps(), (std::vector<int64_t>{1, 2}));
  EXPECT_TRUE(m.is_saving_in_progress());
  EXPECT_FALSE(stdfs_exists(dir / "2"));  // waits for step 1: steps commit in order
  std::thread opener = open_later(gate);
  ASSERT_TRUE(m.save(3, Composite{{"s", StandardSave(s)}}));  // two in flight: waits for step 1
  opener.join();
  m.wait_until_finished();
  EXPECT_EQ(m.all_steps(), (std::vector<int64_t>{1, 2, 3}));
  EXPECT_TRUE(m.restore(2, Composite{{"s", StandardRestore(s)}}).state("s").equal(at2));
  EXPECT_TRUE(m.restore(3, Composite{{"s", StandardRestore(s)}}).state("s").equal(s));
}

TEST(BusyPolicy, SecondBufferReportsTheOlderSavesFailure) {
  register_gate_once();
  test::TempDir dir;
  State s;
  s.insert("w", {Param, at::arange(8, at::kFloat), {}});
  CheckpointManagerOptions o;
  o.busy_policy = BusyPolicy::kSecondBuffer;
  o.handle_preemption_signals = false;
  CheckpointManager m(dir.path(), o);
  std::promise<void> gate;
  ASSERT_TRUE(m.save(1, Composite{{"gate", GateSave{gate.get_future().share(), /*fail=*/true}}}));
  ASSERT_TRUE(m.save(2, Composite{{"s", StandardSave(s)}}));
  gate.set_value();
  try {
    m.wait_until_finished();
    FAIL() << "the failed save of step 1 was not reported";
  } catch (const Error& e) {
    EXPECT_TRUE(contains(e.what(), "failed on purpose")) << e.what();
  }
  EXPECT_EQ(m.all_steps(), (std::vector<int64_t>{2}));  // step 2 committed; step 1 never did
  m.wait_until_finished();  // reported once
}
