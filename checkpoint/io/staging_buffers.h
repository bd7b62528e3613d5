// Page-aligned buffers through which unaligned memory reaches an O_DIRECT write.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <vector>

namespace nnx::checkpoint::io {

/// O_DIRECT needs the file offset, the length and the memory address of each write aligned to
/// the file system's block size; 4 KiB covers every Linux file system on disks with logical
/// blocks of 512 bytes or 4 KiB.
inline constexpr size_t kPage = 4096;
/// The largest single write of the direct path, and the size of a staging buffer (bytes).
inline constexpr size_t kDirectSlice = size_t(4) << 20;

/// A process-wide pool of page-aligned kDirectSlice buffers. At most 8 exist (32 MiB: the bound
/// on the direct path's extra memory, and enough to keep every writer busy while the next
/// slices are staged): take() waits for one to come back. They are kept for the process's
/// lifetime, so a save does not fault in fresh pages for them. Thread-safe.
class StagingBuffers {
 public:
  static StagingBuffers& instance();
  /// A free buffer (waits while all are in use); throws std::bad_alloc.
  char* take();
  /// Returns a buffer from take().
  void give(char* p);

 private:
  StagingBuffers() = default;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<char*> free_;
  size_t made_ = 0;
};

}  // namespace nnx::checkpoint::io
