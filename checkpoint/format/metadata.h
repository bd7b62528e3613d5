// _CHECKPOINT_METADATA: parsing and validation (no file-system access; fuzzed).
#pragma once

#include <nlohmann/json.hpp>

#include <string>

#include "nnx/checkpoint/format/schema.h"

namespace nnx::checkpoint {


/// Parses the text of a _CHECKPOINT_METADATA file and validates its structure
/// (docs/checkpoint-format.md): a JSON object; "format_version" an integer equal to
/// kFormatVersion; "files" an object of {"size": integer >= 0, "checksum": string}; "items" an
/// object of item kinds ("state", "json", or a registered handler's: [A-Za-z0-9_.-]{1,64}); "step" absent or an integer; "world_size" absent or an integer
/// >= 1; "metrics" absent, null or an object. Throws nnx::Error naming `where` and the first
/// problem; never anything else.
nlohmann::json parse_metadata(const std::string& text, const std::string& where);

}  // namespace nnx::checkpoint
