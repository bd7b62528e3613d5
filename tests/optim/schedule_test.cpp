#include "nnx/optim/schedule.h"

#include <gtest/gtest.h>

#include <cmath>

#include "nnx/framework/error.h"

using namespace nnx::optim;

TEST(Schedule, ValuesAtChosenSteps) {
  EXPECT_DOUBLE_EQ(constant(0.1)(12345), 0.1);
  auto w = linear_warmup(1.0, 10);
  EXPECT_DOUBLE_EQ(w(0), 0.0);
  EXPECT_DOUBLE_EQ(w(5), 0.5);
  EXPECT_DOUBLE_EQ(w(10), 1.0);
  EXPECT_DOUBLE_EQ(w(100), 1.0);
  auto c = cosine_decay(1.0, 100, 0.1);
  EXPECT_DOUBLE_EQ(c(0), 1.0);
  EXPECT_NEAR(c(50), 0.1 + 0.9 * 0.5, 1e-12);
  EXPECT_NEAR(c(100), 0.1, 1e-12);
  EXPECT_NEAR(c(1000), 0.1, 1e-12);
  auto wc = warmup_cosine(2.0, 10, 110, 0.0);
  EXPECT_DOUBLE_EQ(wc(5), 1.0);
  EXPECT_DOUBLE_EQ(wc(10), 2.0);
  EXPECT_NEAR(wc(60), 1.0, 1e-12);
  EXPECT_NEAR(wc(110), 0.0, 1e-12);
  auto s = step_decay(1.0, 30, 0.1);
  EXPECT_DOUBLE_EQ(s(29), 1.0);
  EXPECT_NEAR(s(30), 0.1, 1e-15);
  EXPECT_NEAR(s(65), 0.01, 1e-15);
}

TEST(Schedule, JsonRoundTripAndErrors) {
  auto wc = warmup_cosine(2.0, 10, 110, 0.1, 0.01);
  auto back = Schedule::from_json(wc.to_json());
  for (int64_t t : {0, 3, 10, 57, 110, 500}) EXPECT_DOUBLE_EQ(back(t), wc(t));
  EXPECT_THROW(Schedule::from_json({{"type", "exponential"}}), nnx::Error);
  EXPECT_THROW(Schedule::from_json({{"type", "cosine_decay"}}), nnx::Error);
  EXPECT_THROW(cosine_decay(1.0, 0), nnx::Error);
  EXPECT_THROW(warmup_cosine(1.0, 10, 10), nnx::Error);
}
