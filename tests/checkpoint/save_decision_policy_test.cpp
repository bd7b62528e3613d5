#include "nnx/checkpoint/save_decision_policy.h"

#include <gtest/gtest.h>

#include "nnx/framework/error.h"

using namespace nnx;
using namespace nnx::checkpoint;

namespace {
// Steps 1..20 asked in turn; `previous` grows with each step the policy saved (saved at
// t = step seconds, asked at t = step seconds). `in_progress_until`: a save is in flight until
// this many steps after each save.
std::vector<int64_t> decisions(const SaveDecisionPolicy& p, bool preempted_from_12 = false, int in_progress_for = 0) {
  std::vector<CheckpointInfo> previous;
  std::vector<int64_t> saved;
  for (int64_t s = 1; s <= 20; ++s) {
    DecisionContext ctx;
    ctx.now = static_cast<double>(s);
    ctx.reached_preemption = preempted_from_12 && s >= 12;
    ctx.is_saving_in_progress = !saved.empty() && s - saved.back() <= in_progress_for;
    if (p.should_save(CheckpointInfo{s, ctx.now, nullptr}, previous, ctx)) {
      previous.push_back({s, ctx.now, nullptr});
      saved.push_back(s);
    }
  }
  return saved;
}
using Steps = std::vector<int64_t>;
}  // namespace

TEST(SaveDecisionPolicy, TableOverTwentySteps) {
  EXPECT_EQ(decisions(FixedIntervalPolicy(7)), (Steps{7, 14}));
  EXPECT_EQ(decisions(SpecificStepsPolicy({3, 5, 19, 40})), (Steps{3, 5, 19}));
  EXPECT_EQ(decisions(PreemptionCheckpointingPolicy()), Steps{});
  EXPECT_EQ(decisions(PreemptionCheckpointingPolicy(), true), (Steps{12, 13, 14, 15, 16, 17, 18, 19, 20}));
  EXPECT_EQ(decisions(InitialSavePolicy()), Steps{1});
  // Continuous: every step while nothing is in flight; with each save in flight for 2 more
  // steps, every third step; with a minimum interval, that interval.
  EXPECT_EQ(decisions(ContinuousCheckpointingPolicy()).size(), 20u);
  EXPECT_EQ(decisions(ContinuousCheckpointingPolicy(), false, 2), (Steps{1, 4, 7, 10, 13, 16, 19}));
  EXPECT_EQ(decisions(ContinuousCheckpointingPolicy(5)), (Steps{1, 6, 11, 16}));
  EXPECT_EQ(decisions(ContinuousCheckpointingPolicy(0, 4.5)), (Steps{1, 6, 11, 16}));
  AnySavePolicy any({std::make_shared<InitialSavePolicy>(), std::make_shared<FixedIntervalPolicy>(10),
                     std::make_shared<PreemptionCheckpointingPolicy>()});
  EXPECT_EQ(decisions(any), (Steps{1, 10, 20}));
  EXPECT_EQ(decisions(any, true), (Steps{1, 10, 12, 13, 14, 15, 16, 17, 18, 19, 20}));
}

TEST(SaveDecisionPolicy, BadArgumentsAreErrors) {
  EXPECT_THROW(FixedIntervalPolicy(0), Error);
  EXPECT_THROW(ContinuousCheckpointingPolicy(-1), Error);
  EXPECT_THROW(ContinuousCheckpointingPolicy(1, -0.5), Error);
  EXPECT_THROW(AnySavePolicy({}), Error);
  EXPECT_THROW(AnySavePolicy({nullptr}), Error);
}
