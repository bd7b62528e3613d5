// Saves steps 1, 2, 3, ... with a CheckpointManager until killed. Used by the SIGKILL tests:
// every tensor of step s is filled with s, so a restored step can be checked by value.
// Usage: checkpoint_crash_helper DIR sync|async MAX_TO_KEEP
#include <ATen/ATen.h>

#include <cstdlib>
#include <iostream>

#include "checkpoint/manager.h"

int main(int argc, char** argv) {
  if (argc != 4) return 2;
  nnx::checkpoint::CheckpointManagerOptions o;
  o.enable_async_checkpointing = std::string(argv[2]) == "async";
  o.max_to_keep = std::atoi(argv[3]);
  o.handle_preemption_signals = false;
  nnx::checkpoint::CheckpointManager mgr(argv[1], o);
  int64_t step = mgr.latest_step().value_or(0);
  while (true) {
    ++step;
    nnx::State s;
    for (int i = 0; i < 16; ++i)
      s.insert("layer" + std::to_string(i) + "/kernel", {nnx::Param, at::full({256, 256}, static_cast<float>(step)), {}});
    mgr.save(step, nnx::checkpoint::Composite{{"params", nnx::checkpoint::StandardSave(s)},
                                              {"meta", nnx::checkpoint::JsonSave(nlohmann::json{{"step", step}})}},
             {{"loss", 1.0 / static_cast<double>(step)}});
  }
}
