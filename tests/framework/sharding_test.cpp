#include "nnx/framework/sharding.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "nnx/framework/error.h"

using namespace nnx;

TEST(PartitionSpec, ParsesPrintsAndRejectsBadSpecs) {
  EXPECT_TRUE(PartitionSpec().replicated());
  EXPECT_EQ(PartitionSpec().to_string(), "");
  auto s = PartitionSpec::parse("[\"data\",null]");
  EXPECT_EQ(s.sharded_dim(), 0);
  EXPECT_EQ(s.to_string(), "[\"data\",null]");
  EXPECT_EQ(PartitionSpec::sharded(1, 3).to_string(), "[null,\"data\",null]");
  EXPECT_EQ(PartitionSpec::parse("[null,null]"), PartitionSpec());  // no sharded dim: replicated
  EXPECT_TRUE(PartitionSpec::parse("").replicated());
  for (const char* bad : {"data:0", "[\"model\"]", "[\"data\",\"data\"]", "[1]", "{}"}) EXPECT_THROW(PartitionSpec::parse(bad), Error) << bad;
  try {
    PartitionSpec::parse("[\"model\"]");
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown mesh axis 'model' at dimension 0"), std::string::npos) << e.what();
  }
  EXPECT_THROW(PartitionSpec::sharded(2, 2), Error);
  try {
    PartitionSpec::sharded(0, 2).check_rank(3, "params/w");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("params/w: sharding [\"data\",null] has 2 entries, the tensor has 3"),
              std::string::npos)
        << e.what();
  }
}

TEST(PartitionSpec, LivesInVariableMetadataAndIsReadFromAState) {
  Variable w = Param(at::zeros({4, 3}));
  Variable b = Param(at::zeros({3}));
  set_partition_spec(w, PartitionSpec::sharded(1, 2));
  EXPECT_EQ(w.metadata().at(kShardingKey), "[null,\"data\"]");
  State st;
  st.insert("w", {w.kind(), w.value(), w.metadata()});
  st.insert("b", {b.kind(), b.value(), b.metadata()});
  auto specs = get_partition_spec(st);
  ASSERT_EQ(specs.size(), 2u);
  EXPECT_EQ(specs[0].first, "w");
  EXPECT_EQ(specs[0].second.sharded_dim(), 1);
  EXPECT_TRUE(specs[1].second.replicated());
  set_partition_spec(w, PartitionSpec());
  EXPECT_EQ(w.metadata().count(kShardingKey), 0u);
  EXPECT_THROW(set_partition_spec(b, PartitionSpec::sharded(0, 2)), Error);
  st.at("b").metadata[kShardingKey] = "nonsense";
  try {
    get_partition_spec(st);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("variable 'b'"), std::string::npos) << e.what();
  }
}

TEST(PartitionSpec, ArraySplitLayoutCoversEveryRowOnce) {
  for (int64_t extent : {0, 1, 5, 10, 11, 64}) {
    for (int n : {1, 2, 3, 4, 7}) {
      int64_t next = 0, largest = 0, smallest = extent;
      for (int r = 0; r < n; ++r) {
        auto s = shard_range(extent, r, n);
        EXPECT_EQ(s.start, next);
        next += s.size;
        largest = std::max(largest, s.size);
        smallest = std::min(smallest, s.size);
      }
      EXPECT_EQ(next, extent);
      EXPECT_LE(largest - smallest, 1);
    }
  }
  EXPECT_EQ(shard_range(10, 0, 4).size, 3);  // numpy.array_split(range(10), 4): 3, 3, 2, 2
  EXPECT_EQ(shard_range(10, 3, 4).start, 8);
  EXPECT_THROW(shard_range(10, 4, 4), Error);

  at::Tensor g = at::arange(30, at::kFloat).view({3, 10});
  auto spec = PartitionSpec::sharded(1, 2);
  std::vector<at::Tensor> parts;
  for (int r = 0; r < 4; ++r) {
    at::Tensor s = shard_of(g, spec, Mesh{r, 4});
    EXPECT_EQ(s.sizes().vec(), shard_shape({3, 10}, spec, Mesh{r, 4}));
    parts.push_back(s);
  }
  EXPECT_TRUE(at::equal(at::cat(parts, 1), g));
  EXPECT_TRUE(shard_of(g, PartitionSpec(), Mesh{1, 4}).is_same(g));
}
