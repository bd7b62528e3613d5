#include "nnx/framework/log.h"

#include <gtest/gtest.h>
#include <stdlib.h>

TEST(Log, LevelsPrefixAndFiltering) {
  ::unsetenv("NNX_LAUNCH");
  nnx::log::configure("prog", 1, 4);
  nnx::log::set_level(nnx::log::Level::kWarning);
  testing::internal::CaptureStderr();
  nnx::log::info("hidden");
  nnx::log::warn_parts("x = ", 3);
  nnx::log::error("bad");
  std::string out = testing::internal::GetCapturedStderr();
  EXPECT_EQ(out, "[rank 1] prog: warning: x = 3\n[rank 1] prog: error: bad\n");
  ::setenv("NNX_LAUNCH", "1", 1);  // nnx-launch prefixes lines itself
  nnx::log::configure("prog", 1, 4);
  testing::internal::CaptureStderr();
  nnx::log::warning("w");
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "prog: warning: w\n");
  ::unsetenv("NNX_LAUNCH");
  nnx::log::set_level(nnx::log::Level::kInfo);
  nnx::log::configure("nnx", 0, 1);
  EXPECT_THROW(nnx::log::level_from_string("verbose"), nnx::Error);
}
