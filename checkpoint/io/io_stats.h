// Counters of how the I/O engine moved bytes, observed by tests and benchmarks.
#pragma once

#include <cstdint>

namespace nnx::checkpoint::io {

/// How the tensor datasets of the saves and restores on one thread were moved.
struct IoStats {
  /// Datasets of 1 MiB or more written with O_DIRECT on writer threads (DirectWriter).
  int64_t direct_writes = 0;
  /// Datasets written through H5Dwrite (small ones, or all with direct_io off or refused).
  int64_t hdf5_writes = 0;
  /// Datasets (or pieces of virtual ones, one count each) read with pread() on reader threads.
  int64_t direct_reads = 0;
  /// Datasets read through H5Dread (small, stitched, a shard's hyperslab, chunked, ...).
  int64_t hdf5_reads = 0;
  /// Bytes written and read by both paths.
  int64_t bytes_written = 0;
  int64_t bytes_read = 0;
};

/// While alive, counts the I/O of write_state and read_state calls made on the thread that
/// created it (nested scopes: the innermost counts). The public option structs carry no hooks.
class IoStatsScope {
 public:
  IoStatsScope();
  ~IoStatsScope();
  const IoStats& stats() const { return stats_; }

 private:
  IoStatsScope(const IoStatsScope&) = delete;
  IoStatsScope& operator=(const IoStatsScope&) = delete;
  IoStats stats_;
  IoStats* outer_;
};

/// Internal (the format's writer and reader): adds one dataset to the current scope, if any.
void count_write(bool direct, int64_t nbytes);
void count_read(bool direct, int64_t nbytes);

}  // namespace nnx::checkpoint::io
