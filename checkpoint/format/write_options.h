// The options of the HDF5 writer, apart from the writer (checkpointer.h holds them).
#pragma once

#include <cstdint>

namespace nnx::checkpoint {

/// Options of write_state.
struct WriteOptions {
  /// Largest single H5Dwrite, in bytes; bigger tensors are written in slabs along dim 0
  /// (so tensors over 4 GiB never need one huge I/O call).
  int64_t max_write_bytes = int64_t(1) << 30;
  /// Datasets of 1 MiB or more whose tensor is contiguous CPU memory get their file space when
  /// they are created (contiguous, 4 KiB aligned) and their bytes are written there with
  /// O_DIRECT on 4 writer jobs (io::DirectWriter), bypassing the page cache. Temporaries (a
  /// CUDA tensor's host copy, a view made contiguous) go through H5Dwrite, so a save never holds
  /// a host copy of the whole state. The stored bytes and the format are the same either way.
  /// Where the file system refuses O_DIRECT, the same bytes go through the page cache. Off:
  /// every dataset through H5Dwrite.
  bool direct_io = true;
};

}  // namespace nnx::checkpoint
