// A range of a stored array along one dimension: what a restore reads of it.
#pragma once

#include <cstdint>

namespace nnx::checkpoint {

/// Elements [start, start + size) along `dim` of a stored array (a rank's shard).
struct Range {
  int64_t dim = 0, start = 0, size = 0;
};

}  // namespace nnx::checkpoint
