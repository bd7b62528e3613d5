// A committed checkpoint directory: its metadata read and checked, its files opened verified.
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>

#include "nnx/checkpoint/format/h5_file.h"
#include "nnx/checkpoint/format/schema.h"

namespace nnx::checkpoint {

/// Reads and validates <directory>/_CHECKPOINT_METADATA (parse_metadata): format version (an
/// unknown version is an error naming it), the sizes of the files it lists. Throws nnx::Error
/// naming the file.
nlohmann::json read_metadata(const std::filesystem::path& directory);

/// Checks each file `meta` (read_metadata(directory)) lists before anything parses it: its
/// structure checksum (H5File::structure(): HDF5's metadata and small datasets) where the
/// metadata has one, else, for checkpoints written before it existed, the whole file's
/// checksum. Then opens <directory>/checkpoint.h5 read-only. Throws nnx::Error naming the file
/// and both checksums: a file that fails is never handed to HDF5's parser.
H5File open_verified(const std::filesystem::path& directory, const nlohmann::json& meta);

}  // namespace nnx::checkpoint
