#include "nnx/trainer/trainer.h"

#include <malloc.h>

#include <cstdlib>

#include "nnx/trainer/run.h"

namespace nnx::trainer {

void keep_freed_memory() {
  for (const char* v : {"GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD"})
    if (std::getenv(v)) return;
  mallopt(M_MMAP_THRESHOLD, 256 << 20);  // allocations below 256 MiB come from the heap ...
  mallopt(M_TRIM_THRESHOLD, 1 << 30);    // ... and up to 1 GiB of freed heap stays mapped
}

int train(const Config& cfg, const RunOptions& ropts) {
  Run run(cfg, ropts);
  return run.execute();
}

}  // namespace nnx::trainer
