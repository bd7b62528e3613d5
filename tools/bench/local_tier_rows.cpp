// nnx-bench's local_tier rows (tools/bench/rows.h).
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
#include "nnx/checkpoint/format/directory.h"
#include "nnx/checkpoint/format/schema.h"

namespace nnx::bench {

using namespace nnx::checkpoint;

// ---- the local tier: the same 400 MB state in /dev/shm and on the run's disk -----------------
// What a restart costs from each tier (the persistent file dropped from the page cache first, as
// after a restart of the host; the local tier is in memory by construction), and what a local
// save blocks the caller (async, deferred snapshot, as nnx-train's local tier saves).
void bench_local_tier(const stdfs::path& dir, int reps) {
  std::error_code ec;
  const stdfs::path shm = stdfs::is_directory("/dev/shm", ec) ? stdfs::path("/dev/shm") : dir;
  const stdfs::path local = shm / ("nnx-bench-local-" + std::to_string(::getpid())), persistent = dir / "persistent";
  State s = make_state(100, 1000 * 1000);
  const Composite args{{"params", StandardSave(s)}}, restore_args{{"params", StandardRestore(s)}};
  CheckpointManagerOptions po, lo;
  po.max_to_keep = lo.max_to_keep = 1;
  po.enable_async_checkpointing = false;
  po.handle_preemption_signals = lo.handle_preemption_signals = false;
  lo.direct_io = false;
  lo.snapshot_timing = io::SnapshotTiming::kDeferred;
  CheckpointManager pm(persistent, po), lm(local, lo);
  std::vector<double> save_sync, save_local_block, restore_local, restore_cold, restore_warm;
  for (int i = 1; i <= reps; ++i) {
    save_sync.push_back(time_once([&] { pm.save(i, args, nlohmann::json::object(), true); }));
    save_local_block.push_back(time_once([&] { lm.save(i, args, nlohmann::json::object(), true); }));
    lm.wait_until_finished();
    // The three restores of this step in a random order, three rounds: none always follows
    // another (the local one used to follow the cold one every time).
    const stdfs::path file = pm.step_path(i) / kCheckpointFile;
    run_shuffled_rounds(
        {[&] {
           pm.restore(i, restore_args);  // into the page cache (the file was written with O_DIRECT)
           restore_warm.push_back(time_once([&] { pm.restore(i, restore_args); }));
         },
         [&] {
           evict_from_page_cache(file);
           restore_cold.push_back(time_once([&] { pm.restore(i, restore_args); }));
         },
         [&] { restore_local.push_back(time_once([&] { lm.restore(i, restore_args); })); }},
        3, static_cast<uint32_t>(i));
  }
  add_rounds("recovery of 400 MB: local tier (" + shm.string() + ") / persistent tier, cold", restore_local, restore_cold,
             " s", "persistent, cold", 0.2);
  add_rounds("recovery of 400 MB: local tier / persistent tier, page-cached", restore_local, restore_warm, " s",
             "persistent, cached", 0);
  add_rounds("local tier save() blocking (async, deferred snapshot) / persistent sync save", save_local_block, save_sync,
             " s", "persistent sync save", 0);
  stdfs::remove_all(local, ec);
}

// One rank of the replica rows (run under nnx-launch by bench_local_replicas): each rank saves
// its own 400 MB step into its local tier in /dev/shm, then both send it to the other at once,
// as nnx-train's ranks do after a local save. Rank 0 prints: bytes sent per copy, the step's
// bytes, the median transfer time (offer() until the peer has it), the median local save time.
int replica_rank(const std::string& dir, int reps) {
  auto env = distributed::env_from_environment();
  auto pg = distributed::ProcessGroup::create(env, std::chrono::seconds(120));
  at::manual_seed(env.rank);
  State s = make_state(100, 1000 * 1000);
  const stdfs::path host = stdfs::path(dir) / ("host-" + std::to_string(env.rank));
  CheckpointManagerOptions lo;
  lo.max_to_keep = 1;
  lo.enable_async_checkpointing = false;
  lo.handle_preemption_signals = false;
  lo.direct_io = false;
  CheckpointManager lm(host / "own", lo);
  nnx::checkpoint::emergency::PeerReplicas replicas(pg->new_group("replicas"), host, 1, std::make_shared<nnx::checkpoint::LatestN>(1));
  std::vector<double> send_s, save_s;
  int64_t step_bytes = 0;
  for (int i = 1; i <= reps; ++i) {
    save_s.push_back(time_once([&] { lm.save(i, Composite{{"params", StandardSave(s)}}, nlohmann::json::object(), true); }));
    step_bytes = 0;
    for (const auto& e : stdfs::directory_iterator(lm.step_path(i))) step_bytes += static_cast<int64_t>(e.file_size());
    pg->barrier();
    send_s.push_back(time_once([&] {
      replicas.offer(i, lm.step_path(i), [] { return true; });
      while (replicas.copies_sent() < i) std::this_thread::sleep_for(std::chrono::microseconds(200));
    }));
  }
  replicas.stop_sending();
  pg->barrier();
  replicas.stop_receiving();
  std::sort(send_s.begin(), send_s.end());
  std::sort(save_s.begin(), save_s.end());
  if (env.rank == 0)
    std::cout << replicas.bytes_sent() / std::max<int64_t>(1, replicas.copies_sent()) << " " << step_bytes << " "
              << send_s[send_s.size() / 2] << " " << save_s[save_s.size() / 2] << "\n";
  return 0;
}

// Replica traffic: the bytes one local save sends to its peer against the step's size, and
// the transfer's time (both ranks sending at once over Gloo on loopback) against the local save.
void bench_local_replicas(int reps) {
  std::error_code ec;
  const stdfs::path shm = stdfs::is_directory("/dev/shm", ec) ? stdfs::path("/dev/shm") : stdfs::temp_directory_path();
  const stdfs::path dir = shm / ("nnx-bench-replicas-" + std::to_string(::getpid()));
  std::string out = run_capture(std::string(NNX_BIN_DIR) + "/nnx-launch --nproc 2 -- " + NNX_BIN_DIR + "/nnx-bench --replica-rank " +
                                dir.string() + " --reps " + std::to_string(reps) + " 2>/dev/null");
  nnx::checkpoint::io::remove_tree(dir, ec);
  const auto pos = out.find("[rank 0] ");
  std::istringstream in(pos == std::string::npos ? std::string() : out.substr(pos + 9));
  double sent = 0, step = 0, send_s = 0, save_s = 0;
  if (!(in >> sent >> step >> send_s >> save_s)) {
    rows.push_back({"replica traffic per local save", "failed", out.substr(0, 200), "-", "reported", ""});
    return;
  }
  add("replica traffic per local save (400 MB state, 1 replica)", sent / 1e6, step / 1e6, " MB", "the step's files", 0);
  add("replica transfer (2 ranks at once, Gloo, loopback) / local save into " + shm.string(), send_s, save_s, " s",
      "local save", 0);
}


}  // namespace nnx::bench
