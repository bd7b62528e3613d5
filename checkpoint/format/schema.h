// The on-disk format v1's names, in one place (docs/checkpoint-format.md describes them).
#pragma once

#include <string>

#include "nnx/framework/dtype.h"

namespace nnx::checkpoint {

/// The format version written to _CHECKPOINT_METADATA.
constexpr int kFormatVersion = 1;
/// _CHECKPOINT_METADATA's "format" value.
inline constexpr const char* kFormatName = "nnx-checkpoint";

/// Name of the composite HDF5 file inside a checkpoint directory.
inline constexpr const char* kCheckpointFile = "checkpoint.h5";
/// Name of the metadata file, written last: its presence marks a complete checkpoint.
inline constexpr const char* kMetadataFile = "_CHECKPOINT_METADATA";
/// Name of rank `rank`'s file of a checkpoint written by `world_size` ranks.
inline std::string shard_file_name(int rank, int world_size) {
  return "shard-" + std::to_string(rank) + "-of-" + std::to_string(world_size) + ".h5";
}

/// Names inside the HDF5 files.
namespace schema {
/// The group of JSON items: /json/<item> is a UTF-8 string dataset. No State item has this name.
inline constexpr const char* kJsonGroup = "json";
/// Attribute of a State item's group /<item>: JSON array of the variable paths, in State order.
inline constexpr const char* kPaths = "nnx_paths";
/// Attributes of each tensor dataset /<item>/<path>.
inline constexpr const char* kKind = "nnx_kind";        ///< the Variable kind's name
inline constexpr const char* kDtype = "dtype";          ///< logical dtype name (framework/dtype.h)
inline constexpr const char* kShape = "shape";          ///< int64 array, the global shape
inline constexpr const char* kSharding = "sharding";    ///< the PartitionSpec text, or ""
inline constexpr const char* kMetadata = "metadata";    ///< the Variable's metadata as JSON
inline constexpr const char* kChecksum = "checksum";    ///< "xxh3_64:<hex>" of the stored bytes
/// Of a virtual dataset stitched from several ranks' pieces: {"dim", "pieces": [{"file",
/// "start", "size", "checksum"}]}; its own checksum attribute is then empty.
inline constexpr const char* kPieces = "pieces";
}  // namespace schema

/// The item kinds _CHECKPOINT_METADATA's "items" records for the built-in handlers.
inline constexpr const char* kStateItemKind = "state";
inline constexpr const char* kJsonItemKind = "json";

/// The one dtype vocabulary of the format: the `dtype` attribute holds dtype_name()'s logical
/// name; bfloat16 is stored as uint16 and bool as uint8 (their bits), float16 as IEEE half,
/// every other type as itself, little-endian.
using nnx::dtype_from_name;
using nnx::dtype_name;

}  // namespace nnx::checkpoint
