// libFuzzer target: the _CHECKPOINT_METADATA parser (checkpoint/format/metadata.cpp). Every input must
// either parse or raise nnx::Error.
#include <cstdint>
#include <string>

#include "nnx/checkpoint/format/metadata.h"
#include "nnx/framework/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto j = nnx::checkpoint::parse_metadata(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
    // What read_metadata does next with a parsed document must not throw anything else.
    for (auto it = j["files"].begin(); it != j["files"].end(); ++it) (void)it.value().at("size").get<int64_t>();
  } catch (const nnx::Error&) {
  }
  return 0;
}
