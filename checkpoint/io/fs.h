// File-system primitives of the commit protocol: fsync, no-replace rename, locks, unique names.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

namespace nnx::checkpoint::io {

/// fsync(2) of a file or directory; throws nnx::IOError naming it.
void fsync_path(const std::filesystem::path& path);
/// Renames `from` to `to`, failing (nnx::IOError naming both) if `to` exists (renameat2
/// RENAME_NOREPLACE), then fsyncs the parent of `to`.
void rename_no_replace(const std::filesystem::path& from, const std::filesystem::path& to);
/// Removes `path` and everything under it, not following symbolic links (nftw(3), depth
/// first); a missing `path` is no error. The first failure goes to `ec` (and the rest is still
/// attempted). Used instead of std::filesystem::remove_all, which PyTorch 2.x wheels export
/// from libtorch.so in a copy that jumps to address 0 when it wins the symbol lookup (seen with
/// torch 2.11 on the GPU machine).
void remove_tree(const std::filesystem::path& path, std::error_code& ec) noexcept;
/// "<pid>-<random hex>": unique among concurrent writers.
std::string unique_suffix();

/// A POSIX file descriptor, closed when this goes out of scope; move-only. -1: none.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    std::swap(fd_, other.fd_);  // the old descriptor closes with `other`
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd();
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};
/// Bytes [offset, offset + size) of a file that were written from `data` (still valid in memory).
struct MemoryRange {
  int64_t offset = 0;
  int64_t size = 0;
  const void* data = nullptr;
};
/// Size in bytes and "xxh3_64:<hex>" of a file, read in 256 KiB blocks (each hashed while in
/// the core's cache). The bytes of `from_memory` (sorted by offset, not overlapping) are hashed
/// from their memory instead of being read, so the result is the checksum of the file as
/// written even while those bytes are still on their way to it (O_DIRECT writes in flight).
/// Throws nnx::Error naming the file, also when it is shorter than a range's end.
std::pair<int64_t, std::string> file_size_and_checksum(const std::filesystem::path& path,
                                                       const std::vector<MemoryRange>& from_memory = {});
/// Bytes [offset, offset + size) of a file.
struct ByteRange {
  int64_t offset = 0;
  int64_t size = 0;
};
/// Size and "xxh3_64:<hex>" of the bytes of `path` outside `skip` (sorted by offset, not
/// overlapping): a file's structure without the raw data the ranges cover. The ranges
/// themselves are hashed first, so a changed list gives another checksum. Throws nnx::Error
/// naming the file when the ranges are unsorted, overlap or end past the file's end.
std::pair<int64_t, std::string> checksum_outside(const std::filesystem::path& path, const std::vector<ByteRange>& skip);
/// fsync_path(path) on a second thread while this one computes file_size_and_checksum(path):
/// the hash reads the page cache while the disk writes. Throws the fsync's nnx::IOError if it
/// failed, else the hash's error.
std::pair<int64_t, std::string> fsync_and_checksum(const std::filesystem::path& path);
/// Writes `text` to `path` (must not exist) and fsyncs it. Throws nnx::IOError.
void write_file_synced(const std::filesystem::path& path, const std::string& text);
/// Reads a whole file. Throws nnx::Error naming it.
std::string read_file(const std::filesystem::path& path);

/// An exclusive advisory lock (flock) on <directory>/.nnx-writer.lock, held while alive.
class DirectoryLock {
 public:
  /// Throws nnx::Error naming the directory and the holder's pid when another writer holds it.
  explicit DirectoryLock(const std::filesystem::path& directory);
  ~DirectoryLock();
  DirectoryLock(const DirectoryLock&) = delete;
  DirectoryLock& operator=(const DirectoryLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace nnx::checkpoint::io
