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
  double gather_wait_s = NAN;  // ZeRO-3: rank 0's time waiting for all-gathers (the done line)
};

// One fresh run of `steps` steps at `stage`, logging every 2 steps; NANs when it failed.
StageRun run_stage(int stage, bool prefetch, int steps, const stdfs::path& dir) {
  const std::string run_dir = (dir / ("fsdp-stage-" + std::to_string(stage))).string();
  std::error_code ec;
  nnx::checkpoint::io::remove_tree(run_dir, ec);
  const int log_every = 2;
  const std::string cmd = std::string(NNX_BIN_DIR) + "/nnx-launch --nproc 2 -- " + NNX_BIN_DIR + "/nnx-train --config " +
                          NNX_SOURCE_DIR + "/configs/char_gpt.yaml " + kGpt99mOverrides + " run.dir=" + run_dir +
                          " train.max_steps=" + std::to_string(steps) + " train.log_every=" + std::to_string(log_every) +
                          " eval.every_steps=0 eval.max_batches=1 checkpoint.save_interval_steps=1000000000"
                          " schedule.type=constant threads=1 distributed.zero_stage=" + std::to_string(stage) +
                          " distributed.fsdp_prefetch=" + (prefetch ? "true" : "false") + " 2>&1";
  const std::string out = run_capture(cmd);
  StageRun r;
  std::smatch m;
  if (std::regex_search(out, m, std::regex("peak memory ([0-9]+) MiB"))) r.peak_mib = std::stod(m[1]);
  if (std::regex_search(out, m, std::regex("prefetched, ([0-9.e+-]+) s waited"))) r.gather_wait_s = std::stod(m[1]);
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
  // ZeRO-3 with and without prefetch, alternating, twice each; the medians of each.
  const StageRun z0 = run_stage(0, true, steps, dir);
  std::vector<StageRun> on, off;
  for (int i = 0; i < 2; ++i) {
    on.push_back(run_stage(3, true, steps, dir));
    off.push_back(run_stage(3, false, steps, dir));
  }
  auto mid = [](const std::vector<StageRun>& v, double StageRun::*f) {
    std::vector<double> x;
    for (const auto& r : v) x.push_back(r.*f);
    return median(x);
  };
  const double z3_mib = mid(on, &StageRun::peak_mib), z3_ms = mid(on, &StageRun::step_ms), off_ms = mid(off, &StageRun::step_ms);
  const double wait_on = mid(on, &StageRun::gather_wait_s), wait_off = mid(off, &StageRun::gather_wait_s);
  std::cerr << "  zero_stage 0: " << z0.peak_mib << " MiB, " << z0.step_ms << " ms/step; zero_stage 3: " << z3_mib
            << " MiB, " << z3_ms << " ms/step, all-gather wait " << wait_on << " s; without prefetch " << off_ms
            << " ms/step, all-gather wait " << wait_off << " s\n";
  const double mem = z3_mib / z0.peak_mib, time = z3_ms / z0.step_ms, hidden = 1.0 - wait_on / wait_off;
  rows.push_back({"ZeRO-3 peak memory per rank / ZeRO-0, GPT 99M, 2 ranks", fmt(z3_mib, " MiB", 0),
                  "ZeRO-0 " + fmt(z0.peak_mib, " MiB", 0) + " (rank 0's peak RSS, " + std::to_string(steps) + " steps)",
                  fmt(mem, "", 3), "<= 0.60", mem <= 0.6 ? "ok" : "MISSED"});
  rows.push_back({"ZeRO-3 step time / ZeRO-0, GPT 99M, 2 ranks", fmt(z3_ms, " ms", 0),
                  "ZeRO-0 " + fmt(z0.step_ms, " ms", 0) + "; without prefetch " + fmt(off_ms, " ms", 0), fmt(time, "", 3),
                  "reported", ""});
  rows.push_back({"ZeRO-3 all-gather time hidden under compute by prefetch, 2 ranks", fmt(wait_on, " s waited", 2),
                  "without prefetch " + fmt(wait_off, " s", 2) + " (rank 0, " + std::to_string(steps) + " steps)",
                  fmt(hidden, "", 3), "reported", ""});
}

}  // namespace nnx::bench
