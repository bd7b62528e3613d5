// The parallel read path: large datasets' bytes read with pread() and verified on reader jobs.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

#include "nnx/checkpoint/io/checksum.h"
#include "nnx/checkpoint/io/task_group.h"

namespace nnx::checkpoint::io {

/// Datasets of this many bytes or more take the I/O fast paths: saves write them with O_DIRECT
/// (DirectWriter), restores read them with pread() on reader jobs (ParallelReader).
inline constexpr int64_t kLargeDataset = int64_t(1) << 20;

/// How a restore overlaps its work: the format's HDF5 calls stay on the calling thread (HDF5
/// is not reentrant) while the bytes of large contiguous datasets are read with pread() at the
/// offsets HDF5 reports, on 2-4 reader jobs, in 256 KiB slices hashed while they are still in
/// the core's cache (XXH3's streaming form, equal to the one-shot hash). Datasets of 64 MiB or
/// more are read in 32 MiB pieces by 4 jobs at once (one stream of preads leaves the disk idle
/// between requests: a 2.4 GB tensor read 2.5 x slower than the file), hashed in order as the
/// pieces arrive. Nothing read may be used before finish().
class ParallelReader {
 public:
  /// `verify`: check every checksum (read_at's and check's).
  explicit ParallelReader(bool verify);
  /// Fills contiguous `t` from bytes [offset, offset + nbytes) of `fd` (which must stay open
  /// until finish()) and, when verifying, checks them against `expected` ("xxh3_64:<hex>").
  void read_at(const at::Tensor& t, int fd, uint64_t offset, std::string expected, std::string where);
  /// Verifies `t` (already read) against `expected`: here when small, else on a reader job.
  void check(const at::Tensor& t, std::string expected, std::string where);
  /// Waits for every read and checksum; throws the first failure (nnx::Error naming `where`).
  void finish() {
    pieces_.wait();
    readers_.wait();
  }

 private:
  void read_in_pieces(const at::Tensor& t, int fd, uint64_t offset, std::string expected, std::string where);
  bool verify_;
  TaskGroup readers_;
  TaskGroup pieces_;  // the pieces of large datasets: I/O-bound, 4 at a time on any machine
};

/// Reads bytes [offset, offset + n) of `fd` into `p` in 256 KiB slices, each added to `hash`
/// (when set) while it is still in the core's cache. Throws nnx::Error naming `where` for a
/// failed or short read.
void read_slices(int fd, char* p, size_t n, uint64_t offset, const std::string& where, StreamingChecksum* hash);

/// Checks the bytes of contiguous `t` against `expected` now; throws nnx::Error naming `where`.
void check_tensor_checksum(const at::Tensor& t, const std::string& expected, const std::string& where);

}  // namespace nnx::checkpoint::io
