// ZeRO-3 (distributed.zero_stage: 3, FullyShardedModel) against ZeRO-0: the 99M GPT trained by
// nnx-train at 2 ranks under nnx-launch, one thread each (this machine's two cores shared).
#include <fstream>
#include <iostream>
#include <regex>

#include "nnx/checkpoint/io/fs.h"
#include "rows.h"

namespace nnx::bench {

namespace {

struct StageRun {
  double peak_mib = NAN;  // rank 0's peak resident memory (nnx-train's done line)
  double step_ms = NAN;   // median step time after the first window
};

// One fresh run of `steps` steps at `stage`, logging every 2 steps; NANs when it failed.
StageRun run_stage(int stage, int steps, const stdfs::path& dir) {
  const std::string run_dir = (dir / ("fsdp-stage-" + std::to_string(stage))).string();
  std::error_code ec;
  nnx::checkpoint::io::remove_tree(run_dir, ec);
  const int log_every = 2;
  const std::string cmd = std::string(NNX_BIN_DIR) + "/nnx-launch --nproc 2 -- " + NNX_BIN_DIR + "/nnx-train --config " +
                          NNX_SOURCE_DIR + "/configs/char_gpt.yaml " + kGpt99mOverrides + " run.dir=" + run_dir +
                          " train.max_steps=" + std::to_string(steps) + " train.log_every=" + std::to_string(log_every) +
                          " eval.every_steps=0 eval.max_batches=1 checkpoint.save_interval_steps=1000000000"
                          " schedule.type=constant threads=1 distributed.zero_stage=" + std::to_string(stage) + " 2>&1";
  const std::string out = run_capture(cmd);
  StageRun r;
  std::smatch m;
  if (std::regex_search(out, m, std::regex("peak memory ([0-9]+) MiB"))) r.peak_mib = std::stod(m[1]);
  std::ifstream in(run_dir + "/metrics.jsonl");
  std::vector<double> ms;
  for (std::string line; std::getline(in, line);) {
    const double ex_per_s = nlohmann::json::parse(line)["examples_per_sec"].get<double>();
    if (ex_per_s > 0) ms.push_back(4.0 / ex_per_s * 1e3);  // rank 0's 4 examples per step
  }
  if (ms.size() > 1) r.step_ms = median(std::vector<double>(ms.begin() + 1, ms.end()));  // the first window warms up
  if (!(r.peak_mib > 0)) std::cerr << "  zero_stage " << stage << " run failed:\n" << out << "\n";
  return r;
}

}  // namespace

void bench_fsdp(bool quick, const stdfs::path& dir) {
  if (quick) {  // minutes of 99M-param training: not in --quick
    rows.push_back({"ZeRO-3 / ZeRO-0, GPT 99M, 2 ranks", "-", "skipped in --quick", "-", "", ""});
    return;
  }
  const int steps = 10;
  const StageRun z0 = run_stage(0, steps, dir), z3 = run_stage(3, steps, dir);
  std::cerr << "  zero_stage 0: " << z0.peak_mib << " MiB, " << z0.step_ms << " ms/step; zero_stage 3: " << z3.peak_mib
            << " MiB, " << z3.step_ms << " ms/step\n";
  const double mem = z3.peak_mib / z0.peak_mib, time = z3.step_ms / z0.step_ms;
  rows.push_back({"ZeRO-3 peak memory per rank / ZeRO-0, GPT 99M, 2 ranks", fmt(z3.peak_mib, " MiB", 0),
                  "ZeRO-0 " + fmt(z0.peak_mib, " MiB", 0) + " (rank 0's peak RSS, " + std::to_string(steps) + " steps)",
                  fmt(mem, "", 3), "<= 0.60", mem <= 0.6 ? "ok" : "MISSED"});
  rows.push_back({"ZeRO-3 step time / ZeRO-0, GPT 99M, 2 ranks", fmt(z3.step_ms, " ms", 0),
                  "ZeRO-0 " + fmt(z0.step_ms, " ms", 0) + "; all-gathers hidden under compute: none (no prefetch yet)",
                  fmt(time, "", 3), "reported", ""});
}

}  // namespace nnx::bench
