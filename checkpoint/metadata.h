// _CHECKPOINT_METADATA: parsing and validation (no file-system access; fuzzed).
#pragma once

#include <nlohmann/json.hpp>

#include <string>

namespace nnx::checkpoint {

/// The format version written to _CHECKPOINT_METADATA (docs/checkpoint-format.md).
constexpr int kFormatVersion = 1;

/// Parses the text of a _CHECKPOINT_METADATA file and validates its structure
/// (docs/checkpoint-format.md): a JSON object; "format_version" an integer equal to
/// kFormatVersion; "files" an object of {"size": integer >= 0, "checksum": string}; "items" an
/// object of "state" | "json"; "step" absent or an integer; "world_size" absent or an integer
/// >= 1; "metrics" absent, null or an object. Throws nnx::Error naming `where` and the first
/// problem; never anything else.
nlohmann::json parse_metadata(const std::string& text, const std::string& where);

}  // namespace nnx::checkpoint
