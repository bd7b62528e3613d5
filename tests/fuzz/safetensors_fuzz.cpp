// libFuzzer target: safetensors files in memory (nnx-ckpt import's and export's format). Every
// input must parse or raise nnx::Error naming the problem; a crash, a sanitizer report or
// another exception type is a finding. Seeds: tests/fuzz/corpus/safetensors.
#include <cstddef>
#include <cstdint>

#include "nnx/checkpoint/format/safetensors.h"
#include "nnx/framework/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    nnx::checkpoint::parse_safetensors(data, size, "input");
  } catch (const nnx::Error&) {
  }
  return 0;
}
