// The I/O engine: one pool for the subsystem, groups that always finish, writes that commit waits for.
#include "nnx/checkpoint/io/task_group.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>

#include "nnx/checkpoint/format/state_writer.h"
#include "nnx/checkpoint/io/direct_writer.h"
#include "nnx/checkpoint/io/io_stats.h"
#include "nnx/checkpoint/shard_planner.h"
#include "nnx/framework/error.h"
#include "test_util.h"

using namespace nnx;
using namespace nnx::checkpoint;

TEST(TaskGroup, RunsEveryJobAndRethrowsTheEarliestSubmittedFailure) {
  std::atomic<int> ran{0};
  io::TaskGroup g(3);
  for (int i = 0; i < 50; ++i)
    g.submit([&, i] {
      ++ran;
      if (i == 7) throw Error("job 7");
      if (i == 30) throw std::runtime_error("job 30");
    });
  try {
    g.wait();
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "job 7");  // the earliest, with its type kept
  }
  EXPECT_EQ(ran.load(), 50);
  EXPECT_NO_THROW(g.wait());  // reported once
  EXPECT_THROW(g.submit([] {}), InternalError);
}

TEST(TaskGroup, NestedGroupsFinishEvenWithEveryPoolThreadWaiting) {
  // More outer jobs than pool threads, each waiting for inner jobs of its own group: a waiter
  // runs its group's unstarted jobs itself, so nothing waits for a thread that never comes.
  const int outer = 4 * io::pool_size();
  std::atomic<int> inner_done{0};
  io::TaskGroup g(outer);
  for (int i = 0; i < outer; ++i)
    g.submit([&] {
      io::TaskGroup inner(4);
      for (int k = 0; k < 8; ++k) inner.submit([&] { ++inner_done; });
      inner.wait();
    });
  g.wait();
  EXPECT_EQ(inner_done.load(), outer * 8);
  EXPECT_FALSE(g.busy());
}

TEST(PendingWrites, AFileIsNotClosedWithoutTheWritesItsWriteStateReturned) {
  test::TempDir dir;
  State s;
  s.insert("big", {Param, at::arange(1 << 19, at::kFloat), {}});  // 2 MiB: the direct path
  H5File f = H5File::create((dir / "a.h5").string());
  io::IoStatsScope scope;
  io::PendingWrites pending = write_state(f, "params", s);
  if (scope.stats().direct_writes == 0) GTEST_SKIP() << "this file system refuses O_DIRECT";
  // Closing without them would hide a failed write: refused, and nothing is lost.
  EXPECT_THROW(f.close(), Error);
  auto [size, sum] = f.commit(std::move(pending));
  EXPECT_EQ(io::file_size_and_checksum(dir / "a.h5").second, sum);
  EXPECT_GT(size, int64_t(1) << 21);
}

TEST(PendingWrites, DroppedWritesAreCancelledAndTheFileStaysUncommitted) {
  test::TempDir dir;
  State s;
  for (int i = 0; i < 8; ++i) s.insert("t" + std::to_string(i), {Param, at::full({1 << 20}, float(i)), {}});
  {
    io::IoStatsScope scope;
    H5File f = H5File::create((dir / "dropped.h5").string());
    { io::PendingWrites pending = write_state(f, "params", s); }  // dropped: skipped or finished, never dangling
    // Its writes were not handed over: the file can no longer be committed.
    if (scope.stats().direct_writes > 0) {
      EXPECT_THROW(f.commit(), Error);
    }
  }
  // The tensors may change now; a new file of the same state is complete and reads back.
  H5File g = H5File::create((dir / "kept.h5").string());
  auto [size, sum] = g.commit(write_state(g, "params", s));
  EXPECT_EQ(io::file_size_and_checksum(dir / "kept.h5").second, sum);
  H5File back = H5File::open((dir / "kept.h5").string());
  EXPECT_TRUE(read_state(back, "params", s).equal(s));
}
