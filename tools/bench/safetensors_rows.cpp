// nnx-bench's safetensors row (tools/bench/rows.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <CLI/CLI.hpp>
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/pooling.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/serialize.h>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <atomic>
#include <thread>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <map>
#include <random>
#include "nnx/checkpoint/async_checkpointer.h"
#include "nnx/checkpoint/shard_planner.h"
#include "nnx/checkpoint/io/device_copies.h"
#include "nnx/checkpoint/format/safetensors.h"
#include "nnx/checkpoint/io/fs.h"
#include "nnx/checkpoint/manager.h"
#include "nnx/framework/compat.h"
#include "nnx/framework/data/dataset.h"
#include "nnx/framework/distributed.h"
#include "nnx/checkpoint/emergency/peer_replicas.h"
#include "nnx/framework/graph.h"
#include "nnx/framework/host_memory.h"
#include "nnx/framework/gradient_reducer.h"
#include "nnx/models/models.h"
#include "nnx/trainer/trainer.h"
#include "nnx/optim/optimizer.h"

#include "bench_common.h"
#include "rows.h"

namespace nnx::bench {

using namespace nnx::checkpoint;

// ---- safetensors: nnx-cpp's reader against Python's safetensors.numpy.load_file -------------
// The 400 MB state of the checkpoint rows (100 fp32 tensors of 4 MB) as one safetensors file,
// in the page cache; each round reads it with read_safetensors here and with load_file in a
// Python process that times only the load (tools/bench/safetensors_load.py, .venv-interop).
void bench_safetensors(const stdfs::path& dir, int reps) {
  const std::string py = std::string(NNX_SOURCE_DIR) + "/.venv-interop/bin/python";
  if (!stdfs::exists(py)) {
    rows.push_back({"safetensors load 400 MB vs safetensors.numpy", "-", "no .venv-interop (tools/setup-interop.sh)", "-", "skipped", ""});
    return;
  }
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& [path, vs] : make_state(100, 1000 * 1000)) tensors.emplace_back(path, vs.value);
  const std::string file = (dir / "state.safetensors").string();
  write_safetensors(file, tensors);
  std::vector<double> ours, theirs;
  std::vector<std::function<void()>> contenders = {
      [&] { ours.push_back(time_once([&] { read_safetensors(file); })); },
      [&] {
        const std::string out = run_capture(py + " " + NNX_SOURCE_DIR + "/tools/bench/safetensors_load.py " + file + " 2>/dev/null");
        if (!out.empty()) theirs.push_back(std::stod(out));
      }};
  for (const auto& c : contenders) c();  // warm-up: the file in the page cache, Python's imports cached
  ours.clear(), theirs.clear();
  run_shuffled_rounds(contenders, 3 * reps);
  if (theirs.size() != ours.size()) {
    rows.push_back({"safetensors load 400 MB vs safetensors.numpy", fmt(median(ours), " s"), "load_file failed", "-", "MISSED", ""});
    return;
  }
  add_rounds("safetensors load 400 MB (100 fp32 tensors, page-cached) vs safetensors.numpy.load_file", ours, theirs, " s",
             "load_file", 1.2);
  std::error_code ec;
  stdfs::remove(file, ec);
}


}  // namespace nnx::bench
