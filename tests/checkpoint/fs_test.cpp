#include "nnx/checkpoint/io/fs.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "nnx/framework/error.h"
#include "test_util.h"

using namespace nnx::checkpoint;
namespace stdfs = std::filesystem;

TEST(Fs, RenameNeverReplaces) {
  nnx::test::TempDir dir;
  std::filesystem::create_directory(dir / "a");
  std::filesystem::create_directory(dir / "b");  // even an empty target is not replaced
  EXPECT_THROW(io::rename_no_replace(dir / "a", dir / "b"), nnx::IOError);
  io::rename_no_replace(dir / "a", dir / "c");
  EXPECT_TRUE(std::filesystem::exists(dir / "c"));
}

TEST(Fs, SecondLockFailsWithClearError) {
  nnx::test::TempDir dir;
  io::DirectoryLock first(dir.path());
  try {
    io::DirectoryLock second(dir.path());
    FAIL();
  } catch (const nnx::Error& e) {
    EXPECT_NE(std::string(e.what()).find("in use by another writer"), std::string::npos);
  }
}

TEST(Fs, FileChecksumAndSyncedWrite) {
  nnx::test::TempDir dir;
  io::write_file_synced(dir / "x", "hello");
  auto [size, sum] = io::file_size_and_checksum(dir / "x");
  EXPECT_EQ(size, 5);
  EXPECT_EQ(sum.rfind("xxh3_64:", 0), 0u);
  EXPECT_THROW(io::write_file_synced(dir / "x", "again"), nnx::IOError);
  EXPECT_EQ(io::read_file(dir / "x"), "hello");
}

TEST(Fs, RemoveTreeRemovesNestedDirectoriesWithoutFollowingLinks) {
  nnx::test::TempDir dir;
  const auto outside = dir / "outside";
  stdfs::create_directories(outside);
  std::ofstream(outside / "keep.txt") << "kept";
  const auto tree = dir / "tree";
  stdfs::create_directories(tree / "a" / "b");
  std::ofstream(tree / "a" / "b" / "x.h5") << "x";
  std::ofstream(tree / "top.json") << "{}";
  stdfs::create_directory_symlink(outside, tree / "link");  // removed as a link, its target kept
  std::error_code ec;
  nnx::checkpoint::io::remove_tree(tree, ec);
  EXPECT_FALSE(ec) << ec.message();
  EXPECT_FALSE(stdfs::exists(tree));
  EXPECT_TRUE(stdfs::exists(outside / "keep.txt"));
  nnx::checkpoint::io::remove_tree(tree, ec);  // already gone: no error
  EXPECT_FALSE(ec);
  std::ofstream(dir / "file") << "f";  // a plain file too
  nnx::checkpoint::io::remove_tree(dir / "file", ec);
  EXPECT_FALSE(ec);
  EXPECT_FALSE(stdfs::exists(dir / "file"));
}
