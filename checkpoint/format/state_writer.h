// Writing a State as an HDF5 item: one dataset per variable, or virtual datasets over shards.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "nnx/checkpoint/format/h5_file.h"
#include "nnx/checkpoint/format/write_options.h"
#include "nnx/checkpoint/io/pending_writes.h"
#include "nnx/framework/state.h"

namespace nnx::checkpoint {

/// Writes every tensor of `state` as a dataset /<item>/<path> with the attributes of
/// format/schema.h: nnx_kind, dtype (logical: bfloat16 is stored as uint16, bool as uint8),
/// shape, sharding, metadata (JSON) and checksum ("xxh3_64:<16 hex digits>" of the stored bytes,
/// C order, little-endian); the group gets nnx_paths. CUDA tensors are copied to the host,
/// views written as their elements only. Returns the writes still in flight (the direct path's):
/// their tensors must not change until the file's close() or commit() that takes them, which
/// reports a failed write. Throws nnx::IOError naming the file and dataset on failure, nnx::Error
/// for an abstract or undefined tensor or a bad item name.
io::PendingWrites write_state(H5File& file, const std::string& item, const State& state,
                              const WriteOptions& options = {});

/// Where a virtual dataset's bytes live: one piece per writing rank, each a dataset at the same
/// /<item>/<path> in another file (relative to the referring file's directory).
struct VirtualSource {
  struct Piece {
    std::string file;
    std::string checksum;         ///< the piece dataset's checksum attribute
    std::vector<int64_t> shape;   ///< the piece's shape
  };
  /// One piece: the whole array (a replicated tensor written by one rank). Several pieces:
  /// the ranks' shards in rank order, concatenated along `dim` into the global array.
  std::vector<Piece> pieces;
  int64_t dim = -1;
};

/// Like write_state, but every path in `sources` becomes an HDF5 virtual dataset over the same
/// dataset in other files (the ranks' shard files), so this file presents the global arrays;
/// paths not in `sources` are written here. Attributes are the same as write_state's, with the
/// global shape. A dataset stitched from several pieces has an empty `checksum` and a `pieces`
/// attribute: JSON {"dim": d, "pieces": [{"file", "start", "size", "checksum"}, ...]} (pieces
/// of size 0 omitted). Throws nnx::Error when the pieces' other dimensions disagree.
io::PendingWrites write_state_virtual(H5File& file, const std::string& item, const State& state,
                                      const std::map<std::string, VirtualSource>& sources,
                                      const WriteOptions& options = {});

}  // namespace nnx::checkpoint
