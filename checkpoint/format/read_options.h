// The options of a State restore, apart from the reader (args.h holds them without HDF5).
#pragma once

#include <c10/core/Device.h>

#include <optional>

#include "nnx/framework/filter.h"
#include "nnx/framework/sharding.h"

namespace nnx::checkpoint {

/// Options of a State restore (StandardRestore's).
struct ReadOptions {
  /// Only template paths matching this filter are read (partial restore).
  Filter filter = Everything();
  /// Cast to the template's dtype when the stored dtype differs (else a mismatch is an error).
  bool cast = false;
  /// Allow the file to hold paths the template lacks (they are ignored).
  bool allow_extra = false;
  /// Target device; default: the template tensor's device (CPU for meta templates).
  std::optional<c10::Device> device;
  /// Verify each dataset's checksum (default on).
  bool verify_checksums = true;
  /// Where this process sits on the 'data' mesh. A template variable whose metadata holds a
  /// sharded PartitionSpec (framework/sharding.h) is read as this rank's shard of the stored
  /// global array: its template shape must be that shard's shape. Read by the shard planner
  /// (checkpoint/shard_planner.h), not by the format. Checkpointer::restore with a process
  /// group sets it from the group when it is unset; unset elsewhere means rank 0 of 1.
  std::optional<Mesh> mesh;
};

}  // namespace nnx::checkpoint
