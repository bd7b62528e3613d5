// The direct write path: a large dataset's bytes written with O_DIRECT on writer threads.
#pragma once

#include <ATen/core/Tensor.h>

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "nnx/checkpoint/io/checksum.h"
#include "nnx/checkpoint/io/fs.h"
#include "nnx/checkpoint/io/task_group.h"

namespace nnx::checkpoint::io {

/// Writes tensors' bytes at given offsets of one file, bypassing the page cache. The format
/// allocates a large dataset's space when it creates it (contiguous, 4 KiB aligned) and never
/// touches those bytes; write() sends them with O_DIRECT in slices of up to 4 MiB on 4 writer
/// jobs (they wait on the disk, not on a core), so several writes are in flight and no copy goes
/// through the page cache. The calling thread hashes each slice for the dataset's checksum while
/// it stages it: memory that is not page-aligned is copied into a staging buffer in 256 KiB
/// pieces, each hashed while it is in the core's cache, so the bytes are read once for both. The
/// dataset's last partial page goes through the page cache: O_DIRECT writes cover whole pages
/// that nothing else writes, so the two never meet in one page. Where the file system refuses an
/// O_DIRECT write (EINVAL) the same bytes go through the page cache. write() is called from one
/// thread; finish() and cancel() from any.
class DirectWriter {
 public:
  /// `fd`: the file's descriptor (HDF5's own); the file is opened again through /proc/self/fd
  /// (so the writes reach the very file HDF5 created), once with O_DIRECT and once without, and
  /// these writes may go on after HDF5 closed it.
  explicit DirectWriter(int fd);
  /// Unwinding (a save that failed before commit): queued writes are skipped, running ones end.
  ~DirectWriter();
  DirectWriter(const DirectWriter&) = delete;
  DirectWriter& operator=(const DirectWriter&) = delete;
  /// False when the file system refused O_DIRECT at open: nothing may be written here.
  bool enabled() const { return direct_fd_.valid(); }
  /// Writes contiguous CPU tensor `t`'s bytes at file offset `offset` (a multiple of kPage) and
  /// returns their checksum (checksum_bytes's value). Keeps `t` alive until this writer is
  /// destroyed. Waits while every staging buffer is in use. `where` names the dataset in errors.
  std::string write(const at::Tensor& t, uint64_t offset, const std::string& where);
  /// Waits for every write; throws the nnx::IOError of the earliest that failed.
  void finish();
  /// Skips the writes not yet started (a save that will not commit).
  void cancel() { failed_ = true; }
  /// Every byte range written, with the memory it comes from (valid until destruction).
  const std::vector<io::MemoryRange>& ranges() const { return ranges_; }

 private:
  void write_slice(const char* from, size_t len, uint64_t at, const std::string& where);
  void submit_write(const char* from, char* staged, size_t len, uint64_t at, const std::string& where);
  UniqueFd fd_, direct_fd_;
  std::atomic<bool> buffered_{false};
  std::atomic<bool> failed_{false};
  StreamingChecksum hash_;
  std::vector<at::Tensor> keep_;
  std::vector<io::MemoryRange> ranges_;
  TaskGroup writers_{4};  // declared last: joined before the descriptors close and keep_ is freed
};

/// Writes `n` bytes at `offset` through `fd` (the page cache); throws nnx::IOError naming `where`.
void pwrite_all(int fd, const char* p, size_t n, uint64_t offset, const std::string& where);

}  // namespace nnx::checkpoint::io
