// JSON items: /json/<item>, a UTF-8 string dataset with a checksum attribute.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "nnx/checkpoint/format/h5_file.h"

namespace nnx::checkpoint {

/// Stores `value` as a UTF-8 string dataset /json/<item> with a checksum attribute. Throws
/// nnx::IOError naming the file and item.
void write_json(H5File& file, const std::string& item, const nlohmann::json& value);
/// Reads /json/<item>; throws nnx::Error naming the file and item when absent, corrupt (checksum)
/// or not JSON.
nlohmann::json read_json(const H5File& file, const std::string& item);
/// Names of the JSON items.
std::vector<std::string> list_json_items(const H5File& file);

}  // namespace nnx::checkpoint
