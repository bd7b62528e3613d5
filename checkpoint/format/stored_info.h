// What a tensor dataset's attributes say about it. Private to checkpoint/format.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <string>
#include <vector>

#include "nnx/framework/state.h"

namespace nnx::checkpoint::h5 {

/// One piece of a stitched dataset: rows [start, start + size) along the piece dimension.
struct StoredPiece {
  int64_t start = 0, size = 0;
  std::string checksum;
};

/// A dataset's attributes (format/schema.h), validated.
struct StoredInfo {
  std::string kind, dtype, checksum, sharding;
  std::vector<int64_t> shape;
  Metadata metadata;
  int64_t piece_dim = -1;           ///< a stitched dataset: the concatenation dimension
  std::vector<StoredPiece> pieces;  ///< ... and its pieces, each with its own checksum
};

/// Reads and validates the attributes of `dset`. Throws nnx::Error naming `where` and the
/// attribute that is missing or malformed.
StoredInfo read_info(hid_t dset, const std::string& where);

}  // namespace nnx::checkpoint::h5
