// nnx-bench: measures nnx-cpp against what users would pick instead, in one run, one table.
//   nnx-bench [--quick] [--dir DIR] [--json FILE] [--only ROW...] [--gpt-runs N]
// Every row says how it was measured; see BENCHMARKS.md for a recorded run. The row families
// live in tools/bench/*_rows.cpp (rows.h); this file chooses and runs them, and prints the table.
#include <ATen/ATen.h>
#include <CLI/CLI.hpp>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>

#include <nlohmann/json.hpp>

#include "bench_common.h"
#include "nnx/checkpoint/io/fs.h"
#include "nnx/framework/data/dataset.h"
#include "nnx/framework/host_memory.h"
#include "nnx/trainer/trainer.h"
#include "rows.h"

namespace nnx::bench {
namespace {
// Runs the rows `only` names (all but gpu when empty), `reps` repetitions each, files in `dir`.
void run_rows(const std::vector<std::string>& only, bool quick, const stdfs::path& dir, int reps, int gpt_runs) {
  auto want = [&](const std::string& s) { return only.empty() || std::find(only.begin(), only.end(), s) != only.end(); };
  at::manual_seed(0);
  if (want("eval_shape")) { std::cerr << "eval_shape...\n"; bench_eval_shape(); }
  // The optimizer row runs first with glibc's default malloc settings (how a program runs
  // torch::optim::Adam, which allocates temporaries every step), then again with freed memory
  // kept in the process, where no contender pays page faults for its temporaries.
  if (want("optimizer")) { std::cerr << "optimizer...\n"; bench_optimizer(reps, "glibc default malloc settings", 1.0); }
  // The remaining in-process rows (checkpoint I/O) measure I/O paths, not how this process's
  // heap happens to be fragmented: freed memory stays mapped (as in nnx-train) for ours and
  // the anchors alike.
  nnx::trainer::keep_freed_memory();
  if (want("optimizer")) bench_optimizer(reps, "freed memory kept, as nnx-train does", 1.0);
  if (want("checkpoint")) { std::cerr << "checkpoint (400 MB)...\n"; bench_checkpoint(dir, reps); }
  if (want("training")) { std::cerr << "training...\n"; bench_training(quick, dir); }
  if (want("distributed")) {
    std::cerr << "distributed save...\n";
    bench_distributed_save(dir, reps);
    std::cerr << "overlapped all-reduce (2 ranks)...\n";
    bench_overlapped_all_reduce(reps);
  }
  if (want("manager")) { std::cerr << "checkpoint manager...\n"; bench_manager(dir); }
  if (want("fsdp")) { std::cerr << "ZeRO-3 against ZeRO-0 (2 ranks)...\n"; bench_fsdp(quick, dir); }
  if (want("snapshot")) { std::cerr << "training with checkpoints...\n"; bench_snapshot(quick, dir, gpt_runs); }
  if (std::find(only.begin(), only.end(), "gpu") != only.end()) {
    std::cerr << "GPU training against PyTorch...\n";
    bench_gpu_training(quick, dir);
    std::cerr << "GPU checkpoints (2 GB)...\n";
    bench_gpu_checkpoint(dir, reps);
  }
  if (want("local_tier")) {
    std::cerr << "local tier (400 MB)...\n";
    bench_local_tier(dir, reps);
    bench_local_replicas(reps);
    std::cerr << "local tier, training at 2 ranks...\n";
    bench_local_tier_training(quick, dir);
  }
  if (want("safetensors")) { std::cerr << "safetensors...\n"; bench_safetensors(dir, reps); }
  if (want("restore_after_save")) { std::cerr << "restore 2.4 GB after a save...\n"; bench_restore_after_save(dir); }
}

// The table in Markdown on stdout, and as JSON in `json_out` when given.
void print_table(const std::string& json_out) {
  std::cout << "| benchmark | ours | anchor | ratio | target | |\n|---|---|---|---|---|---|\n";
  nlohmann::json j = nlohmann::json::array();
  for (const auto& r : rows) {
    std::cout << "| " << r.name << " | " << r.ours << " | " << r.anchor << " | " << r.ratio << " | " << r.target << " | " << r.verdict << " |\n";
    j.push_back({{"benchmark", r.name}, {"ours", r.ours}, {"anchor", r.anchor}, {"ratio", r.ratio}, {"target", r.target}, {"verdict", r.verdict}});
  }
  if (!json_out.empty()) std::ofstream(json_out) << j.dump(2) << "\n";
}

}  // namespace
}  // namespace nnx::bench

using namespace nnx;
using namespace nnx::bench;

int main(int argc, char** argv) {
  CLI::App app{"nnx-bench: nnx-cpp against its anchors, one table"};
  bool quick = false;
  std::string dir_arg, json_out;
  std::vector<std::string> only;
  app.add_flag("--quick", quick, "fewer repetitions and steps, no 99M-param training rows");
  app.add_option("--dir", dir_arg, "scratch directory for files (default: a new one under /tmp)");
  app.add_option("--only", only, "rows to run: eval_shape, optimizer, checkpoint, safetensors, training, distributed, manager, fsdp, snapshot, restore_after_save, local_tier, gpu (only when named)");
  app.add_option("--json", json_out, "also write the table as JSON");
  std::string dist_rank_dir;
  int reps_override = 0;
  app.add_option("--dist-save-rank", dist_rank_dir)->group("");
  int dp_step_rounds = 0;
  app.add_option("--dp-step-rank", dp_step_rounds)->group("");
  std::string replica_rank_dir;
  app.add_option("--replica-rank", replica_rank_dir)->group("");
  std::string plain_model;  // one plain-libtorch contender in its own process (bench_training)
  int plain_steps = 0;
  app.add_option("--plain-train", plain_model)->group("");
  app.add_option("--plain-steps", plain_steps)->group("");
  bool plain_keep_freed = false;
  app.add_flag("--plain-keep-freed", plain_keep_freed)->group("");
  app.add_option("--reps", reps_override, "repetitions of each timed row (default 5, 3 with --quick)");
  // Six runs give 30 saving windows: a 10-step GPT window moves 4% against its neighbours here,
  // and five or ten windows landed on either side of the row's 1.02.
  int gpt_runs = 6;
  app.add_option("--gpt-runs", gpt_runs, "runs of the 99M GPT's training-with-checkpoints row, about 5 minutes each (default 6)")
      ->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  if (!dist_rank_dir.empty()) return dist_save_rank(dist_rank_dir, reps_override > 0 ? reps_override : 3);
  if (dp_step_rounds > 0) return dp_step_rank(dp_step_rounds);
  if (!replica_rank_dir.empty()) return replica_rank(replica_rank_dir, reps_override > 0 ? reps_override : 3);
  if (!plain_model.empty()) {
    if (plain_keep_freed) {  // nnx-train's memory settings (Run's constructor)
      nnx::trainer::keep_freed_memory();
      nnx::use_huge_pages_for_large_tensors();
    }
    auto ds = data::load_fashion_mnist("/usr/share/datasets/fashion-mnist", "train");
    std::cout << plain_examples_per_sec(plain_model == "cnn", plain_steps, 2, ds) << "\n";
    return 0;
  }
  stdfs::path dir = dir_arg.empty() ? stdfs::temp_directory_path() / ("nnx-bench-" + std::to_string(::getpid())) : stdfs::path(dir_arg);
  stdfs::create_directories(dir);
  try {
    run_rows(only, quick, dir, reps_override > 0 ? reps_override : (quick ? 3 : 5), gpt_runs);
  } catch (const std::exception& e) {
    std::cerr << "nnx-bench: error: " << e.what() << "\n";
    return 1;
  }
  std::error_code ec;
  if (dir_arg.empty()) nnx::checkpoint::io::remove_tree(dir, ec);
  print_table(json_out);
  return 0;
}

