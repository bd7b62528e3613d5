// libFuzzer target: the YAML config loader (tools/trainer/config.cpp). Every input must either
// load or raise nnx::Error; any other exception or crash is a bug.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "nnx/framework/error.h"
#include "nnx/trainer/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/tmp/nnx-config-fuzz-" + std::to_string(::getpid()) + ".yaml";
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return 0;
  std::fwrite(data, 1, size, f);
  std::fclose(f);
  try {
    nnx::trainer::load_config(path, {"train.max_steps=5"});
  } catch (const nnx::Error&) {
  }
  std::remove(path.c_str());  // nothing left in /tmp after a run (one file per process was)
  return 0;
}
