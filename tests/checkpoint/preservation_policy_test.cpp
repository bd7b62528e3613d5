#include "nnx/checkpoint/preservation_policy.h"

#include <gtest/gtest.h>

#include <cmath>

#include "nnx/framework/error.h"

using namespace nnx;
using namespace nnx::checkpoint;

namespace {
// Steps 10, 20, ..., 100 saved 100 s apart (step 10 at t = 1000); loss given per step, NaN = a
// non-finite metric, -1 = saved without metrics.
std::vector<CheckpointInfo> ten_steps(const std::vector<double>& loss) {
  std::vector<CheckpointInfo> c;
  for (size_t i = 0; i < loss.size(); ++i) {
    CheckpointInfo info{static_cast<int64_t>(10 * (i + 1)), 1000.0 + 100.0 * static_cast<double>(i), nlohmann::json()};
    if (loss[i] != -1) info.metrics = {{"loss", std::isnan(loss[i]) ? nlohmann::json("nan") : nlohmann::json(loss[i])}};
    c.push_back(info);
  }
  return c;
}

std::vector<int64_t> kept(const PreservationPolicy& p, const std::vector<CheckpointInfo>& c, double now = 2000) {
  auto flags = p.should_preserve(c, PreservationContext{now});
  EXPECT_EQ(flags.size(), c.size());
  std::vector<int64_t> out;
  for (size_t i = 0; i < c.size(); ++i)
    if (flags[i]) out.push_back(c[i].step);
  return out;
}

const double kNaN = std::nan("");
const std::vector<double> kLoss = {0.9, 0.5, -1, 0.7, kNaN, 0.2, 0.8, -1, 0.3, 0.6};
using Steps = std::vector<int64_t>;
}  // namespace

// One table: each policy over the same ten steps.
TEST(PreservationPolicy, TableOverTenSteps) {
  const auto c = ten_steps(kLoss);
  auto loss = metric_key("loss");
  struct Row {
    const char* name;
    PreservationPolicyPtr policy;
    Steps kept;
  };
  std::vector<Row> rows = {
      {"PreserveAll", std::make_shared<PreserveAll>(), {10, 20, 30, 40, 50, 60, 70, 80, 90, 100}},
      {"LatestN(3)", std::make_shared<LatestN>(3), {80, 90, 100}},
      {"LatestN(20)", std::make_shared<LatestN>(20), {10, 20, 30, 40, 50, 60, 70, 80, 90, 100}},
      {"EveryNSteps(30)", std::make_shared<EveryNSteps>(30), {30, 60, 90}},
      // t = 1000, 1100, ...: one kept per 250 s starting with the oldest.
      {"EveryNSeconds(250)", std::make_shared<EveryNSeconds>(250), {10, 40, 70, 100}},
      {"CustomSteps", std::make_shared<CustomSteps>(std::set<int64_t>{20, 70, 1000}), {20, 70}},
      // now = 2000: steps saved after t = 1650 (t = 1700, 1800, 1900) are younger than 350 s.
      {"LatestDuration(350)", std::make_shared<LatestDuration>(350), {80, 90, 100}},
      {"BestN(2, min) + without", std::make_shared<BestN>(loss, "min", 2), {30, 50, 60, 80, 90}},
      {"BestN(2, min) only", std::make_shared<BestN>(loss, "min", 2, false), {60, 90}},
      {"BestN(3, max) only", std::make_shared<BestN>(loss, "max", 3, false), {10, 40, 70}},
      // MaxToKeep: the latest, then the best, then the newest without a metric.
      {"MaxToKeep(1)", std::make_shared<MaxToKeep>(1, loss), {100}},
      {"MaxToKeep(3)", std::make_shared<MaxToKeep>(3, loss), {60, 90, 100}},
      {"MaxToKeep(9)", std::make_shared<MaxToKeep>(9, loss), {10, 20, 40, 50, 60, 70, 80, 90, 100}},
      {"MaxToKeep(10) fills with NaN and no-metric steps", std::make_shared<MaxToKeep>(10, loss),
       {10, 20, 30, 40, 50, 60, 70, 80, 90, 100}},
      {"MaxToKeep(10) without them", std::make_shared<MaxToKeep>(10, loss, "min", false),
       {10, 20, 40, 60, 70, 90, 100}},
      {"MaxToKeep(4) no metric", std::make_shared<MaxToKeep>(4), {70, 80, 90, 100}},
      {"Any(LatestN(2), EveryNSteps(40), BestN(1))",
       std::make_shared<AnyPreservationPolicy>(std::vector<PreservationPolicyPtr>{
           std::make_shared<LatestN>(2), std::make_shared<EveryNSteps>(40), std::make_shared<BestN>(loss, "min", 1, false)}),
       {40, 60, 80, 90, 100}},
  };
  for (const auto& r : rows) EXPECT_EQ(kept(*r.policy, c), r.kept) << r.name;
}

// Ties rank the newer step first; NaN, Inf and unreadable metrics are never best.
TEST(PreservationPolicy, NonFiniteAndUnreadableMetricsNeverCountAsBest) {
  std::vector<CheckpointInfo> c = {{1, 0, {{"loss", 0.5}}},
                                   {2, 0, {{"loss", 0.5}}},
                                   {3, 0, {{"loss", "x"}}},
                                   {4, 0, {{"acc", 1.0}}},
                                   {5, 0, nlohmann::json()}};
  auto throws = [](const nlohmann::json& m) { return m.at("loss").get<double>(); };
  EXPECT_EQ(kept(BestN(throws, "min", 1, false), c), Steps{2});
  EXPECT_EQ(kept(BestN([](const nlohmann::json&) { return INFINITY; }, "max", 1, false), c), Steps{});
  EXPECT_EQ(kept(MaxToKeep(2, throws, "min", false), c), (Steps{2, 5}));
  EXPECT_EQ(kept(MaxToKeep(3, throws), c), (Steps{1, 2, 5}));     // the latest, then the best
  EXPECT_EQ(kept(MaxToKeep(4, throws), c), (Steps{1, 2, 4, 5}));  // then the newest without
  EXPECT_EQ(kept(LatestN(2), {}), Steps{});
  EXPECT_EQ(kept(MaxToKeep(2), {}), Steps{});
}

TEST(PreservationPolicy, BadArgumentsAreErrors) {
  EXPECT_THROW(LatestN(0), Error);
  EXPECT_THROW(EveryNSteps(0), Error);
  EXPECT_THROW(EveryNSeconds(0), Error);
  EXPECT_THROW(LatestDuration(-1), Error);
  EXPECT_THROW(BestN(metric_key("loss"), "lowest", 1), Error);
  EXPECT_THROW(BestN(metric_key("loss"), "min", 0), Error);
  EXPECT_THROW(MaxToKeep(0), Error);
  EXPECT_THROW(AnyPreservationPolicy({}), Error);
  EXPECT_THROW(AnyPreservationPolicy({nullptr}), Error);
}

namespace {
struct ShortPolicy : PreservationPolicy {
  std::vector<bool> should_preserve(const std::vector<CheckpointInfo>&, const PreservationContext&) const override {
    return {true};
  }
};
}  // namespace

// A union over a policy that returns the wrong number of flags is an error, not a read past it.
TEST(PreservationPolicy, UnionChecksEachPolicysAnswer) {
  AnyPreservationPolicy any({std::make_shared<LatestN>(1), std::make_shared<ShortPolicy>()});
  EXPECT_THROW(any.should_preserve(ten_steps(kLoss), PreservationContext{0}), Error);
}
