#include "nnx/checkpoint/io/fs.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "nnx/framework/error.h"
#include "test_util.h"

using namespace nnx::checkpoint;

TEST(Fs, RenameNeverReplaces) {
  nnx::test::TempDir dir;
  std::filesystem::create_directory(dir / "a");
  std::filesystem::create_directory(dir / "b");  // even an empty target is not replaced
  EXPECT_THROW(fs::rename_no_replace(dir / "a", dir / "b"), nnx::IOError);
  fs::rename_no_replace(dir / "a", dir / "c");
  EXPECT_TRUE(std::filesystem::exists(dir / "c"));
}

TEST(Fs, SecondLockFailsWithClearError) {
  nnx::test::TempDir dir;
  fs::DirectoryLock first(dir.path());
  try {
    fs::DirectoryLock second(dir.path());
    FAIL();
  } catch (const nnx::Error& e) {
    EXPECT_NE(std::string(e.what()).find("in use by another writer"), std::string::npos);
  }
}

TEST(Fs, FileChecksumAndSyncedWrite) {
  nnx::test::TempDir dir;
  fs::write_file_synced(dir / "x", "hello");
  auto [size, sum] = fs::file_size_and_checksum(dir / "x");
  EXPECT_EQ(size, 5);
  EXPECT_EQ(sum.rfind("xxh3_64:", 0), 0u);
  EXPECT_THROW(fs::write_file_synced(dir / "x", "again"), nnx::IOError);
  EXPECT_EQ(fs::read_file(dir / "x"), "hello");
}
