#include "nnx/framework/error.h"

#include <gtest/gtest.h>

TEST(Error, CheckBuildsMessageFromParts) {
  try {
    NNX_CHECK(1 + 1 == 3, "bad value ", 42, " at '", "a/b", "'");
    FAIL() << "no throw";
  } catch (const nnx::Error& e) {
    EXPECT_STREQ(e.what(), "bad value 42 at 'a/b'");
    EXPECT_EQ(e.exit_code(), 2);
    EXPECT_GT(e.line(), 0);
  }
}

TEST(Error, IOAndInternalErrorsExitOne) {
  EXPECT_THROW(NNX_CHECK_IO(false, "disk"), nnx::IOError);
  try {
    NNX_INTERNAL_ASSERT(false, "x");
  } catch (const nnx::Error& e) {
    EXPECT_EQ(e.exit_code(), 1);
    EXPECT_NE(std::string(e.what()).find("internal error"), std::string::npos);
  }
}
