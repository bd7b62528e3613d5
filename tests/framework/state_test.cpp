#include "nnx/framework/state.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "nnx/framework/error.h"

using namespace nnx;

namespace {
State make_state() {
  State s;
  s.insert("fc1/kernel", {Param, at::arange(6, at::kFloat).reshape({2, 3}), {}});
  s.insert("fc1/bias", {Param, at::zeros({3}), {}});
  s.insert("bn/mean", {BatchStat, at::ones({3}), {}});
  s.insert("rngs/default/count", {RngCount, at::scalar_tensor(0, at::kLong), {}});
  return s;
}
}  // namespace

TEST(State, OrderedInsertAndLookup) {
  State s = make_state();
  EXPECT_EQ(s.size(), 4u);
  EXPECT_EQ(s.paths(), (std::vector<std::string>{"fc1/kernel", "fc1/bias", "bn/mean", "rngs/default/count"}));
  EXPECT_THROW(s.insert("fc1/bias", {Param, at::zeros({1}), {}}), Error);
  try {
    s.at("fc2/bias");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("fc2/bias"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("did you mean 'fc1/bias'"), std::string::npos);
  }
  EXPECT_TRUE(s.erase("bn/mean"));
  EXPECT_FALSE(s.contains("bn/mean"));
  EXPECT_EQ(s.at("rngs/default/count").kind, RngCount);
}

TEST(State, FilterSplitMergeDifference) {
  State s = make_state();
  auto parts = s.split({Param, BatchStat, Everything()});
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(parts[0].paths(), (std::vector<std::string>{"fc1/kernel", "fc1/bias"}));
  EXPECT_EQ(parts[1].paths(), (std::vector<std::string>{"bn/mean"}));
  EXPECT_EQ(parts[2].paths(), (std::vector<std::string>{"rngs/default/count"}));
  EXPECT_EQ(parts[0].size() + parts[1].size() + parts[2].size(), s.size());
  // Unmatched variable without Everything is an error naming it.
  try {
    s.split({Param, BatchStat});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rngs/default/count"), std::string::npos);
  }
  EXPECT_THROW(s.split({Everything(), Param}), Error);
  State merged = parts[2] | parts[0] | parts[1];
  EXPECT_EQ(merged.size(), s.size());
  State right;
  right.insert("fc1/bias", {Param, at::ones({3}), {}});
  EXPECT_TRUE(at::equal((s | right).at("fc1/bias").value, at::ones({3})));
  EXPECT_EQ(s.difference(parts[0]).paths(), (std::vector<std::string>{"bn/mean", "rngs/default/count"}));
  EXPECT_EQ(s.filter(Not(Param)).size(), 2u);
}

TEST(State, EqualityAllcloseCloneAndPrint) {
  State a = make_state();
  State b = a.clone();
  EXPECT_TRUE(a.equal(b));
  b.at("fc1/kernel").value.add_(1e-7);
  EXPECT_FALSE(a.equal(b));
  EXPECT_NE(a.first_difference(b).find("fc1/kernel"), std::string::npos);
  EXPECT_TRUE(a.allclose(b, 1e-5, 1e-6));
  b.at("fc1/kernel").value.add_(1.0);
  EXPECT_FALSE(a.allclose(b));
  // clone is deep
  EXPECT_FALSE(a.at("fc1/kernel").value.data_ptr() == b.at("fc1/kernel").value.data_ptr());
  EXPECT_EQ(a.nbytes(), 6 * 4 + 3 * 4 + 3 * 4 + 8);
  std::string text = a.to_string();
  EXPECT_NE(text.find("State(4 variables, 56 B)"), std::string::npos) << text;
  EXPECT_NE(text.find("fc1/kernel"), std::string::npos);
  EXPECT_NE(text.find("[2, 3]"), std::string::npos);
  EXPECT_NE(text.find("BatchStat"), std::string::npos);
  EXPECT_NE(text.find("Float"), std::string::npos);
}

TEST(State, NestedViewRoundTrips) {
  State s = make_state();
  NestedState n = s.nested();
  EXPECT_EQ(n.keys, (std::vector<std::string>{"fc1", "bn", "rngs"}));
  EXPECT_TRUE(n["fc1"]["kernel"].leaf.has_value());
  EXPECT_EQ(n["rngs"]["default"]["count"].leaf->kind, RngCount);
  EXPECT_THROW(n["nope"], Error);
  EXPECT_TRUE(State::from_nested(n).equal(s));
  EXPECT_EQ(format_bytes(1536), "1.5 KiB");
  EXPECT_EQ(split_path("a/b/c"), (std::vector<std::string>{"a", "b", "c"}));
}
