#include "nnx/checkpoint/io/io_stats.h"

namespace nnx::checkpoint::io {

namespace {
thread_local IoStats* current = nullptr;
}

IoStatsScope::IoStatsScope() : outer_(current) { current = &stats_; }
IoStatsScope::~IoStatsScope() { current = outer_; }

void count_write(bool direct, int64_t nbytes) {
  if (!current) return;
  (direct ? current->direct_writes : current->hdf5_writes) += 1;
  current->bytes_written += nbytes;
}

void count_read(bool direct, int64_t nbytes) {
  if (!current) return;
  (direct ? current->direct_reads : current->hdf5_reads) += 1;
  current->bytes_read += nbytes;
}

}  // namespace nnx::checkpoint::io
