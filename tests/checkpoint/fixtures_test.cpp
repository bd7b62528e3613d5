// The format is a promise: checkpoints written by earlier code (tests/data/checkpoints-v1, see
// its README) restore bitwise, and a new save of the same state writes the same datasets and
// attributes (compared with h5py).
#include <gtest/gtest.h>

#include "nnx/checkpoint/checkpointer.h"
#include "nnx/checkpoint/format/directory.h"
#include "nnx/checkpoint/format/schema.h"
#include "nnx/checkpoint/verify.h"
#include "checkpoint/fixture_state.h"
#include "test_util.h"
#include "tools/run_util.h"

using namespace nnx;
using namespace nnx::checkpoint;

namespace {

std::filesystem::path fixture(const std::string& name) { return test::tests_dir() / "data" / "checkpoints-v1" / name; }

// Restores the fixture's two items against templates of `rank` of `world_size`.
Restored restore_fixture(const std::string& name, int rank, int world_size) {
  ReadOptions o;
  o.mesh = Mesh{rank, world_size};
  Checkpointer c;
  return c.restore(fixture(name), Composite{{"state", StandardRestore(test::fixture_state(rank, world_size), o)},
                                            {"extra", JsonRestore()}});
}

void expect_fixture(const Restored& r, int rank, int world_size) {
  const State want = test::fixture_state(rank, world_size);
  EXPECT_TRUE(r.state("state").equal(want)) << r.state("state").first_difference(want);
  for (const auto& [path, vs] : want) EXPECT_EQ(r.state("state").at(path).kind, vs.kind) << path;
  EXPECT_EQ(r.state("state").at("dense/bias_bf16").value.scalar_type(), at::kBFloat16);
  EXPECT_EQ(r.json_item("extra"), test::fixture_json());
}

}  // namespace

TEST(FormatFixtures, OneRankCheckpointRestoresBitwise) {
  expect_fixture(restore_fixture("1-rank", 0, 1), 0, 1);
  EXPECT_TRUE(verify(fixture("1-rank")).ok);
  EXPECT_EQ(read_metadata(fixture("1-rank"))["step"], 7);
}

TEST(FormatFixtures, TwoRankCheckpointRestoresBitwiseAtAnyWorldSize) {
  // Global arrays (virtual datasets over the shards, the ZeRO-1 moment stitched from two pieces).
  expect_fixture(restore_fixture("2-ranks", 0, 1), 0, 1);
  // Each rank's shard of the sharded moment, at 2 and 3 ranks.
  for (int n : {2, 3})
    for (int r = 0; r < n; ++r) expect_fixture(restore_fixture("2-ranks", r, n), r, n);
  auto v = verify(fixture("2-ranks"));
  EXPECT_TRUE(v.ok) << (v.problems.empty() ? "" : v.problems[0]);
}

TEST(FormatFixtures, ANewSaveWritesTheSameDatasetsAndAttributes) {
  if (test::run("/usr/bin/python3 -c 'import h5py'").exit_code != 0) GTEST_SKIP() << "python3-h5py is not installed";
  test::TempDir dir;
  Checkpointer c;
  c.save(dir / "fixture", Composite{{"state", StandardSave(test::fixture_state())}, {"extra", JsonSave(test::fixture_json())}},
         {{"step", 7}, {"metrics", {{"loss", 0.5}}}});
  auto r = test::run("/usr/bin/python3 " + (test::tests_dir() / "checkpoint" / "compare_h5.py").string() + " " +
                     (fixture("1-rank") / kCheckpointFile).string() + " " + (dir / "fixture" / kCheckpointFile).string());
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("12 objects compared"), std::string::npos) << r.output;
}
