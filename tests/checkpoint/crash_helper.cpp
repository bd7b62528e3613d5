// Saves steps 1, 2, 3, ... with a CheckpointManager until killed. Used by the SIGKILL tests:
// every tensor of step s is filled with s, so a restored step can be checked by value.
// Usage: checkpoint_crash_helper DIR sync|async MAX_TO_KEEP
//        checkpoint_crash_helper DIR fullfs LIMIT_BYTES
//   fullfs: saves step 1, then limits the file size (RLIMIT_FSIZE, as a full disk would) and
//   saves a larger step 2; exits 0 when that save failed with nnx::IOError and left no tmp dir.
#include <ATen/ATen.h>
#include <signal.h>
#include <sys/resource.h>

#include <cstdlib>
#include <filesystem>
#include <iostream>

#include "nnx/checkpoint/manager.h"
#include "nnx/framework/error.h"

namespace {
int full_disk(const char* dir, long long limit) {
  nnx::checkpoint::CheckpointManagerOptions o;
  o.enable_async_checkpointing = false;
  o.handle_preemption_signals = false;
  nnx::checkpoint::CheckpointManager mgr(dir, o);
  auto item = [](int64_t numel) {
    nnx::State s;
    s.insert("w", {nnx::Param, at::ones({numel}), {}});
    return nnx::checkpoint::Composite{{"params", nnx::checkpoint::StandardSave(s)}};
  };
  mgr.save(1, item(1 << 16));
  ::signal(SIGXFSZ, SIG_IGN);  // writes past the limit fail with EFBIG, as ENOSPC would
  struct rlimit rl {static_cast<rlim_t>(limit), static_cast<rlim_t>(limit)};
  ::setrlimit(RLIMIT_FSIZE, &rl);
  try {
    mgr.save(2, item(4 << 20));
  } catch (const nnx::IOError& e) {
    std::cout << "save failed: " << e.what() << "\n";
    for (const auto& entry : std::filesystem::directory_iterator(dir))
      if (entry.path().filename().string().find(".tmp-") != std::string::npos) {
        std::cout << "leftover " << entry.path() << "\n";
        return 3;
      }
    return mgr.all_steps() == std::vector<int64_t>{1} ? 0 : 4;
  }
  std::cout << "save succeeded past the limit\n";
  return 5;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) return 2;
  if (std::string(argv[2]) == "fullfs") return full_disk(argv[1], std::atoll(argv[3]));
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
