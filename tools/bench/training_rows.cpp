// nnx-bench's training, snapshot and local tier training rows (tools/bench/rows.h).
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

// ---- training step: nnx-train vs a plain libtorch loop vs Python ------------------------------
// The seconds of each log window (`log_every` steps) of one fresh nnx-train run in
// dir/train-<config>; empty when the run failed. `extra`: more overrides (applied after these,
// so they win); `batch`: the config's batch size. `nproc` > 1: that many ranks under nnx-launch
// (rank 0's windows).
std::vector<double> nnx_train_window_seconds(const std::string& config, int steps, int threads, const stdfs::path& dir,
                                             const std::string& extra, int64_t batch, int log_every, int nproc = 1) {
  std::string run_dir = (dir / ("train-" + config)).string();
  std::error_code ec;
  nnx::checkpoint::io::remove_tree(run_dir, ec);  // a fresh run each time, never a resume
  const std::string launcher =
      nproc > 1 ? std::string(NNX_BIN_DIR) + "/nnx-launch --nproc " + std::to_string(nproc) + " -- " : std::string();
  std::string cmd = launcher + NNX_BIN_DIR + "/nnx-train --config " + NNX_SOURCE_DIR + "/configs/" + config +
                    " run.dir=" + run_dir + " train.max_steps=" + std::to_string(steps) + " train.log_every=" +
                    std::to_string(log_every) + " eval.max_batches=1 eval.every_steps=0 checkpoint.save_interval_steps=1000000000" +
                    " schedule.type=constant threads=" + std::to_string(threads) + " " + extra + " > /dev/null 2>&1";
  if (std::system(cmd.c_str()) != 0) return {};
  std::ifstream in(run_dir + "/metrics.jsonl");
  std::string line;
  std::vector<double> secs;
  while (std::getline(in, line))
    secs.push_back(static_cast<double>(batch) * log_every / nlohmann::json::parse(line)["examples_per_sec"].get<double>());
  return secs;
}

// Steady-state examples per second of one run. `skip`: windows left out at the start (warm-up;
// with checkpoints, the first save's fresh host buffers too).
double nnx_train_examples_per_sec(const std::string& config, int steps, int threads, const stdfs::path& dir,
                                  const std::string& extra = "", int64_t batch = 64, int log_every = 0, int skip = 1,
                                  int nproc = 1) {
  if (log_every <= 0) log_every = std::max(steps / 5, 10);
  const std::vector<double> w = nnx_train_window_seconds(config, steps, threads, dir, extra, batch, log_every, nproc);
  // Steady state: every window after the first `skip` (warm-up), total examples / total seconds.
  double ex = 0, secs = 0;
  for (size_t k = static_cast<size_t>(skip); k < w.size(); ++k) {
    ex += static_cast<double>(batch) * log_every;
    secs += w[k];
  }
  return secs > 0 ? ex / secs : 0;
}

double plain_examples_per_sec(bool cnn, int steps, int threads, const std::shared_ptr<data::TensorDataset>& ds) {
  namespace tnn = torch::nn;
  at::set_num_threads(threads);
  tnn::Sequential m;
  if (cnn) {
    m = tnn::Sequential(tnn::Conv2d(tnn::Conv2dOptions(1, 32, 3).padding(1)), tnn::BatchNorm2d(32), tnn::ReLU(),
                        tnn::MaxPool2d(2), tnn::Conv2d(tnn::Conv2dOptions(32, 64, 3).padding(1)), tnn::BatchNorm2d(64),
                        tnn::ReLU(), tnn::MaxPool2d(2), tnn::Flatten(), tnn::Dropout(0.25), tnn::Linear(64 * 7 * 7, 128),
                        tnn::ReLU(), tnn::Dropout(0.25), tnn::Linear(128, 10));
  } else {
    m = tnn::Sequential(tnn::Flatten(), tnn::Linear(784, 256), tnn::ReLU(), tnn::Dropout(0.1), tnn::Linear(256, 128),
                        tnn::ReLU(), tnn::Dropout(0.1), tnn::Linear(128, 10));
  }
  torch::optim::AdamW opt(m->parameters(), torch::optim::AdamWOptions(1e-3).weight_decay(0.01));
  auto perm = at::randperm(ds->size(), at::kLong);
  const int64_t bs = 64;
  const int warmup = std::max(steps / 10, 5);
  Clock::time_point t0;
  for (int i = 0; i < steps + warmup; ++i) {
    if (i == warmup) t0 = Clock::now();
    auto idx = perm.slice(0, (i * bs) % (ds->size() - bs)).slice(0, 0, bs);
    auto b = ds->get_batch(idx);
    opt.zero_grad();
    auto loss = at::cross_entropy_loss(m->forward(b.inputs), b.targets);
    loss.backward();
    opt.step();
    loss.item<double>();
  }
  return steps * bs / secs_since(t0);
}

// This machine's throughput drifts by tens of percent over seconds (a shared VM), so the
// contenders run in alternating rounds and the table reports the median of per-round ratios.
void bench_training(bool quick, const stdfs::path& dir) {
  const std::string root = "/usr/share/datasets/fashion-mnist";
  if (!stdfs::exists(root + "/train-images-idx3-ubyte.gz")) {
    rows.push_back({"training step", "-", "dataset-fashion-mnist missing", "-", "", ""});
    return;
  }
  const int threads = 2;
  const int rounds = quick ? 3 : 5;
  for (bool cnn : {false, true}) {
    const int steps = cnn ? (quick ? 100 : 200) : (quick ? 300 : 600);
    const std::string name = cnn ? "CNN" : "MLP";
    std::vector<double> ours_v, plain_v, plain_kf_v, py_v, r_plain, r_plain_kf, r_py;
    for (int r = 0; r < rounds; ++r) {
      double ours = nnx_train_examples_per_sec(cnn ? "fashion_mnist_cnn.yaml" : "fashion_mnist_mlp.yaml", steps, threads, dir);
      // Each contender in a fresh process (nnx-train is one), measured after a warm-up.
      auto plain_run = [&](bool keep_freed) {
        std::string out = run_capture(std::string(NNX_BIN_DIR) + "/nnx-bench --plain-train " + (cnn ? "cnn" : "mlp") +
                                      " --plain-steps " + std::to_string(steps) + (keep_freed ? " --plain-keep-freed" : "") + " 2>/dev/null");
        if (out.empty()) throw std::runtime_error("the plain libtorch training process failed");
        return std::stod(out);
      };
      double plain = plain_run(false);
      double plain_kf = plain_run(true);
      plain_kf_v.push_back(64.0 / plain_kf * 1e3);
      r_plain_kf.push_back(plain_kf / ours);
      std::string py = run_capture("/usr/bin/python3 " + std::string(NNX_SOURCE_DIR) + "/tools/bench/train_step.py " +
                                   (cnn ? "cnn " : "mlp ") + std::to_string(steps) + " " + std::to_string(threads) + " " + root + " 2>/dev/null");
      ours_v.push_back(64.0 / ours * 1e3);
      plain_v.push_back(64.0 / plain * 1e3);
      r_plain.push_back(plain / ours);  // step-time ratio: ours / plain
      if (!py.empty()) {
        py_v.push_back(64.0 / std::stod(py) * 1e3);
        r_py.push_back(std::stod(py) / ours);
      }
      std::cerr << "  " << name << " round " << r << ": ours " << ours_v.back() << " ms, plain " << plain_v.back()
                << " ms, plain keeping freed memory " << plain_kf_v.back() << " ms\n";
    }
    double rp = median(r_plain);
    rows.push_back({"train step " + name + " (batch 64, 2 threads): nnx-train vs plain libtorch", fmt(median(ours_v), " ms"),
                    "plain libtorch " + fmt(median(plain_v), " ms"), fmt(rp, "", 3) + " (median of " + std::to_string(rounds) + " rounds)",
                    "<= 1.03", rp <= 1.03 ? "ok" : "MISSED"});
    const double rk = median(r_plain_kf);
    rows.push_back({"train step " + name + ": nnx-train vs plain libtorch with nnx-train's memory settings", fmt(median(ours_v), " ms"),
                    "plain libtorch " + fmt(median(plain_kf_v), " ms"), fmt(rk, "", 3) + " (median of " + std::to_string(rounds) + " rounds)",
                    "reported", ""});
    if (!r_py.empty()) {
      double rq = median(r_py);
      rows.push_back({"train step " + name + ": nnx-train vs Python PyTorch", fmt(median(ours_v), " ms"),
                      "python3-torch " + fmt(median(py_v), " ms"), fmt(rq, "", 3), "< 1.00", rq < 1.0 ? "ok" : "MISSED"});
    }
  }
}

// ---- training with checkpoints (issue 19): step time with saves every k steps vs none -------
// nnx-train's default async save with a deferred snapshot, on the disk of this machine. Each
// round runs every contender once (fresh processes, alternating), and rows report the median of
// per-round ratios. The disk is the limit: a save's bytes must be written within k steps.
struct TrainContender {
  std::string name, overrides;
  int every;  // steps between saves
};

double disk_write_mb_per_s(const stdfs::path& dir) {
  at::Tensor t = at::randn({100 * 1000 * 1000 / 4});  // 100 MB
  const stdfs::path p = dir / "disk-probe";
  const double secs = time_once([&] {
    int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const char* b = static_cast<const char*>(t.data_ptr());
    size_t len = t.nbytes(), done = 0;
    while (done < len) done += static_cast<size_t>(::write(fd, b + done, len - done));
    ::fsync(fd);
    ::close(fd);
  });
  stdfs::remove(p);
  return t.nbytes() / 1e6 / secs;
}

int64_t step_dir_bytes(const stdfs::path& run_dir) {
  int64_t best = 0;  // the largest step directory: one save's bytes
  for (const auto& e : stdfs::directory_iterator(run_dir / "checkpoints")) {
    if (!e.is_directory()) continue;
    int64_t n = 0;
    for (const auto& f : stdfs::recursive_directory_iterator(e.path()))
      if (f.is_regular_file()) n += static_cast<int64_t>(f.file_size());
    best = std::max(best, n);
  }
  return best;
}

// What a row's saves ask of the storage: "saves need N MB/s of the disk's M MB/s (B MB per
// save)", a save of `save_bytes` every `every` steps of `step_ms`; `disk_mbps` < 0: into memory.
std::string save_bandwidth(int64_t save_bytes, int every, double step_ms, double disk_mbps) {
  const double need = save_bytes / 1e6 / (every * step_ms / 1e3);
  return "saves need " + fmt(need, " MB/s", 0) +
         (disk_mbps < 0 ? std::string(" of memory") : " of the disk's " + fmt(disk_mbps, " MB/s", 0)) + " (" +
         fmt(save_bytes / 1e6, " MB", 1) + " per save)";
}

// Returns the median step time without checkpoints, in ms. `nproc` > 1: that many ranks under
// nnx-launch, one thread each (this machine's two cores shared).
double bench_train_with_checkpoints(const std::string& model, const std::string& config, const std::string& base,
                                  int64_t batch, int steps, int rounds, const std::vector<std::pair<TrainContender, double>>& rows_spec,
                                  const stdfs::path& dir, int nproc = 1) {
  const int threads = nproc > 1 ? 1 : 2;
  const std::string none = base + " checkpoint.save_interval_steps=1000000000";
  std::vector<double> without;
  std::vector<std::vector<double>> with(rows_spec.size()), ratio(rows_spec.size());
  int64_t save_bytes = 0;
  for (int r = 0; r < rounds; ++r) {
    // Odd rounds run the run without checkpoints last: no contender always goes first.
    std::vector<double> ex(rows_spec.size());
    double ex0 = 0;
    if (r % 2 == 0) ex0 = nnx_train_examples_per_sec(config, steps, threads, dir, none, batch, 10, 2, nproc);
    for (size_t i = 0; i < rows_spec.size(); ++i) {
      ex[i] = nnx_train_examples_per_sec(config, steps, threads, dir, base + " " + rows_spec[i].first.overrides, batch, 10,
                                         2, nproc);
      save_bytes = std::max(save_bytes, step_dir_bytes(dir / ("train-" + config)));
    }
    if (r % 2 == 1) ex0 = nnx_train_examples_per_sec(config, steps, threads, dir, none, batch, 10, 2, nproc);
    without.push_back(batch / ex0 * 1e3);
    for (size_t i = 0; i < rows_spec.size(); ++i) {
      with[i].push_back(ex[i] > 0 ? batch / ex[i] * 1e3 : NAN);
      ratio[i].push_back(ex0 / ex[i]);
    }
    std::cerr << "  " << model << " round " << r << ": without checkpoints " << without.back() << " ms/step\n";
  }
  const double mbps = disk_write_mb_per_s(dir);
  for (size_t i = 0; i < rows_spec.size(); ++i) {
    const auto& [c, target] = rows_spec[i];
    const double rt = median(ratio[i]);
    const bool in_memory = c.overrides.find("checkpoint.local") != std::string::npos;  // /dev/shm, not the disk
    rows.push_back({"train step " + model + ", " + c.name + " / without checkpoints", fmt(median(with[i]), " ms"),
                    "without " + fmt(median(without), " ms") + "; " +
                        save_bandwidth(save_bytes, c.every, median(without), in_memory ? -1 : mbps),
                    fmt(rt, "", 3) + " (median of " + std::to_string(rounds) + " rounds)",
                    target > 0 ? "<= " + fmt(target, "", 2) : "reported", target > 0 ? (rt <= target ? "ok" : "MISSED") : ""});
  }
  return median(without);
}

// ---- the same ratios from alternating windows of one run (the targeted rows) -----------------
// A fresh process's step time moves by more than these targets from one run to the next (the
// GPT's runs without checkpoints: 2057-2211 ms per step; single GPT steps 1.8-3.0 s), so the
// targeted rows compare windows of one run instead: windows of `window` steps alternate between
// holding saves and holding none. A save's work (the blocking call, the deferred copy, the
// write, the commit) lands in the steps after the step that saved, so a saving window saves after
// the step before it and every `every` steps after that, the last save `every` steps before its
// end (with a save every step, the last save's write may end in the next window: a CNN save
// writes 5 MB in about one step). Each saving window is divided by the mean of the clean
// windows on either side (a slow drift cancels). Window 0 (warm-up) and window 2 (the run's
// first save, which faults in its host buffers) are left out; window 2 is reported apart.
struct AlternatingSpec {
  std::string name;
  int every;   // steps between saves inside a saving window (the first save at its start)
  int window;  // steps per window, a multiple of `every`
  int pairs, runs;
  double target;
};

void bench_alternating_windows(const std::string& model, const std::string& config, const std::string& base, int64_t batch,
                               const AlternatingSpec& spec, const stdfs::path& dir, double* clean_ms = nullptr) {
  const int W = spec.window, windows = 2 * spec.pairs + 4;  // saving windows 2, 4, ...; the last is clean
  std::string steps;
  for (int k = 2; k + 1 < windows; k += 2)
    for (int s = k * W; s < (k + 1) * W; s += spec.every) steps += (steps.empty() ? "" : ", ") + std::to_string(s);
  const std::string extra = base + " checkpoint.save_interval_steps=null 'checkpoint.save=[{specific_steps: [" + steps +
                            "]}]' checkpoint.max_to_keep=2 checkpoint.async=true";
  std::vector<double> ratio, with_ms, without_ms, first;
  for (int r = 0; r < spec.runs; ++r) {
    const std::vector<double> w = nnx_train_window_seconds(config, windows * W, 2, dir, extra, batch, W);
    if (static_cast<int>(w.size()) != windows) continue;  // a failed run reports no ratio
    first.push_back(w[2] / ((w[1] + w[3]) / 2));
    for (int k = 4; k + 1 < windows; k += 2) {
      ratio.push_back(w[k] / ((w[k - 1] + w[k + 1]) / 2));
      with_ms.push_back(w[k] / W * 1e3);
    }
    for (int k = 3; k < windows; k += 2) without_ms.push_back(w[k] / W * 1e3);
    std::cerr << "  " << model << ", " << spec.name << ", run " << r << ": ms per step by window";
    for (double x : w) std::cerr << " " << fmt(x / W * 1e3, "", 1);
    std::cerr << "\n";
  }
  const double rt = ratio.empty() ? NAN : median(ratio);
  const double clean = without_ms.empty() ? NAN : median(without_ms);
  if (clean_ms) *clean_ms = clean;
  const int64_t save_bytes = ratio.empty() ? 0 : step_dir_bytes(dir / ("train-" + config));  // no run, no directory
  const std::string n = std::to_string(ratio.size()) + " windows of " + std::to_string(W) + " steps in " +
                        std::to_string(spec.runs) + (spec.runs > 1 ? " runs" : " run");
  rows.push_back({"train step " + model + ", " + spec.name + " / none, alternating windows of one run",
                  ratio.empty() ? "failed" : fmt(median(with_ms), " ms"),
                  ratio.empty() ? "-"
                                : "windows without saves " + fmt(clean, " ms") + "; " +
                                      save_bandwidth(save_bytes, spec.every, clean, disk_write_mb_per_s(dir)),
                  ratio.empty() ? "-"
                                : fmt(rt, "", 3) + " (median of " + n + "; quartiles " + fmt(quantile(ratio, 0.25), "", 3) +
                                      "-" + fmt(quantile(ratio, 0.75), "", 3) + ")",
                  "<= " + fmt(spec.target, "", 2),
                  rt <= spec.target ? "ok" : "MISSED"});
  rows.push_back({"train step " + model + ", " + spec.name + ": the run's first saving window (fresh host buffers) / none",
                  first.empty() ? "failed" : fmt(median(first), "", 3), "-", "-", "reported", ""});
}


// Where a save's time goes when training owns the cores: the CPU time (all threads) of one async
// save of the GPT's size, alone in this process, and of its parts, against the core-seconds of
// the steps between two saves. Run quietly (no training beside it), so the CPU time is the work.
void bench_save_cpu(const stdfs::path& dir, double step_ms, int every) {
  State s = make_state(300, 1000 * 1000);  // 1.2 GB in 300 tensors, as the GPT's 1.19 GB save
  const Composite args{{"params", StandardSave(s)}};
  AsyncCheckpointer ck;
  ck.snapshot_timing = io::SnapshotTiming::kDeferred;
  std::vector<at::Tensor> buffers;
  std::vector<double> save_cpu, copy_cpu, norm_cpu;
  for (int i = 0; i < 4; ++i) {  // the first (fresh buffers: page faults) is not counted
    const stdfs::path p = dir / ("cpu" + std::to_string(i));
    double c0 = cpu_seconds();
    ck.save(p, args);
    ck.wait_until_finished();
    const double save = cpu_seconds() - c0;
    c0 = cpu_seconds();
    snapshot_to_host(args, &buffers);
    const double copy = cpu_seconds() - c0;
    std::vector<at::Tensor> ts;
    for (const auto& [path, vs] : s) ts.push_back(vs.value);
    c0 = cpu_seconds();
    at::stack(at::_foreach_norm(ts, 2)).sum().isfinite().item<bool>();  // nnx-train's non-finite check
    const double norm = cpu_seconds() - c0;
    std::error_code ec;
    nnx::checkpoint::io::remove_tree(p, ec);
    if (i == 0) continue;
    save_cpu.push_back(save);
    copy_cpu.push_back(copy);
    norm_cpu.push_back(norm);
  }
  const double budget = every * step_ms / 1e3 * 2;  // core-seconds between two saves (2 threads)
  rows.push_back({"CPU time of one async save of 1.2 GB, all threads (copy, hashes, HDF5, O_DIRECT writes)",
                  fmt(median(save_cpu), " s") + " (the snapshot copy alone " + fmt(median(copy_cpu), " s") +
                      "; nnx-train's non-finite check " + fmt(median(norm_cpu), " s") + ")",
                  std::to_string(every) + " GPT steps on 2 cores: " + fmt(budget, " core-s", 1),
                  fmt((median(save_cpu) + median(norm_cpu)) / budget, "", 3), "reported", ""});
}

// `gpt_runs`: runs of the GPT row (5 saving windows each).
void bench_snapshot(bool quick, const stdfs::path& dir, int gpt_runs) {
  const int rounds = quick ? 2 : 5;  // CNN runs take seconds; their ratios swung 0.91-1.24 over 3 rounds
  const std::string keep = " checkpoint.max_to_keep=2 checkpoint.async=true";
  const TrainContender every10{"async save every 10 steps (deferred snapshot)", "checkpoint.save_interval_steps=10" + keep, 10};
  const TrainContender every1{"async save every step (deferred snapshot)", "checkpoint.save_interval_steps=1" + keep, 1};
  const TrainContender every1_in_save{"async save every step (snapshot in save)",
                                      "checkpoint.save_interval_steps=1 checkpoint.snapshot=in_save" + keep, 1};
  // The local tier (issue 20) saving every step into /dev/shm; the persistent tier only at the end.
  const TrainContender local1{"local tier save every step (/dev/shm), persistent at the end",
                              "checkpoint.save_interval_steps=1000000 checkpoint.local.save_interval_steps=1" + keep, 1};
  if (stdfs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")) {
    // The targets are checked on alternating windows of one run; whole runs against whole runs
    // stay as reported rows.
    bench_train_with_checkpoints("CNN", "fashion_mnist_cnn.yaml", "", 64, quick ? 100 : 200, rounds,
                                 {{every10, 0}, {every1, 0}, {every1_in_save, 0}, {local1, 0}}, dir);
    // Windows of 50 steps (about 2 s): windows of 10 CNN steps moved 25-65 ms per step.
    bench_alternating_windows("CNN", "fashion_mnist_cnn.yaml", "", 64,
                              {"async save every 10 steps", 10, 50, quick ? 3 : 6, quick ? 1 : 3, 1.02}, dir);
    bench_alternating_windows("CNN", "fashion_mnist_cnn.yaml", "", 64,
                              {"async save every step", 1, 50, quick ? 3 : 6, quick ? 1 : 3, 1.10}, dir);
  } else
    rows.push_back({"train step CNN with checkpoints", "-", "dataset-fashion-mnist missing", "-", "", ""});
  const std::string gpt = kGpt99mOverrides;
  if (quick) {  // about 30 minutes of 99M-param training: not in --quick
    rows.push_back({"train step GPT 99M with checkpoints", "-", "skipped in --quick", "-", "", ""});
    return;
  }
  // Runs of 140 steps (about 5 minutes each): five saving windows each, between clean ones.
  double gpt_ms = NAN;
  bench_alternating_windows("GPT 99M", "char_gpt.yaml", gpt, 4, {"async save every 10 steps", 10, 10, 5, gpt_runs, 1.02}, dir,
                            &gpt_ms);
  bench_save_cpu(dir, gpt_ms, 10);
}

// The local tier's cost to training at 2 ranks: a local save every step (async, deferred
// snapshot), without and with a replica sent to the peer beside the steps, against no
// checkpoints; the persistent tier saves only the last step.
void bench_local_tier_training(bool quick, const stdfs::path& dir) {
  if (!stdfs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")) {
    rows.push_back({"train step CNN, 2 ranks, local tier", "-", "dataset-fashion-mnist missing", "-", "", ""});
    return;
  }
  const std::string local = "checkpoint.save_interval_steps=1000000 checkpoint.local.save_interval_steps=1";
  const TrainContender own{"local tier save every step, no replica", local + " checkpoint.local.replicas=0", 1};
  const TrainContender replica{"local tier save every step + 1 replica to the peer", local + " checkpoint.local.replicas=1", 1};
  bench_train_with_checkpoints("CNN, 2 ranks", "fashion_mnist_cnn.yaml", "", 64, quick ? 100 : 200, quick ? 2 : 5,
                               {{own, 0}, {replica, 0}}, dir, 2);
}


}  // namespace nnx::bench

namespace nnx::bench {

// ---- training on the GPU against a plain PyTorch eager loop (issue 36, item 1) ----------------
// nnx-train and tools/bench/train_step.py (the machine's own torch: `python3`, or
// NNX_BENCH_PYTHON) train the same model, batch, dtype and optimizer, alternating in fresh
// processes; each row is the median of per-round step-time ratios. NNX_BENCH_GPU_DEVICE=cpu
// runs the same rows small on the CPU: the dry run of a GPU machine's script.
namespace {
struct GpuRun {
  std::string device, python;
  bool dry;
};

GpuRun gpu_run() {
  const char* d = std::getenv("NNX_BENCH_GPU_DEVICE");
  const char* py = std::getenv("NNX_BENCH_PYTHON");
  GpuRun g{d ? d : "cuda", py ? py : "python3", false};
  g.dry = g.device == "cpu";
  return g;
}

// Dense bf16 Tensor Core peak of the GPU nvidia-smi names (NVIDIA's H100 and H200 datasheets),
// in FLOP/s; 0 when unknown (MFU is then not reported).
double bf16_peak_flops() {
  const std::string name = run_capture("nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1");
  if (name.find("H100 PCIe") != std::string::npos) return 756e12;
  if (name.find("H100") != std::string::npos || name.find("H200") != std::string::npos) return 989.4e12;
  return 0;
}

// Distinct bytes of a file: nnx-train's text dataset's vocabulary (one token per byte value).
int64_t byte_vocab(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<bool> seen(256);
  char c;
  while (in.get(c)) seen[static_cast<unsigned char>(c)] = true;
  return std::count(seen.begin(), seen.end(), true);
}

// One row pair: nnx-train's step time against train_step.py's, `rounds` alternating rounds.
// Returns the median step times (ours, anchor) in ms; NAN when a contender failed.
std::pair<double, double> gpu_rounds(const std::string& name, const std::string& config, const std::string& overrides,
                                     const std::string& py_args, int64_t batch, int steps, int rounds,
                                     const stdfs::path& dir, const GpuRun& g) {
  std::vector<double> ours, anchor;
  for (int r = 0; r < rounds; ++r) {
    const double eps = nnx_train_examples_per_sec(config, steps, 4, dir, "device=" + g.device + " " + overrides, batch,
                                                  std::max(steps / 5, 5));
    const std::string out = run_capture(g.python + " " + NNX_SOURCE_DIR + "/tools/bench/train_step.py " + py_args +
                                        " --device " + g.device + " 2>/dev/null");
    if (eps <= 0 || out.empty()) return {NAN, NAN};
    ours.push_back(batch / eps * 1e3);
    anchor.push_back(batch / std::stod(out) * 1e3);
    std::cerr << "  " << name << " round " << r << ": nnx-train " << ours.back() << " ms, PyTorch " << anchor.back() << " ms\n";
  }
  add_rounds(name, ours, anchor, " ms", "PyTorch eager (" + g.python + ")", 1.0);
  return {median(ours), median(anchor)};
}
}  // namespace

void bench_gpu_training(bool quick, const stdfs::path& dir) {
  const GpuRun g = gpu_run();
  if (!g.dry && !compat::cuda_available()) {
    rows.push_back({"train steps on the GPU vs PyTorch", "-", "no CUDA device in this build or machine", "-", "skipped", ""});
    return;
  }
  const int rounds = quick || g.dry ? 2 : 3;
  const std::string mnist = "/usr/share/datasets/fashion-mnist", text = "/usr/share/common-licenses/GPL-3";
  const std::string root = std::getenv("NNX_BENCH_MNIST") ? std::getenv("NNX_BENCH_MNIST") : mnist;
  const int cnn_steps = g.dry ? 20 : 300;
  gpu_rounds("train step CNN on " + g.device + " (batch 64): nnx-train / PyTorch eager", "fashion_mnist_cnn.yaml",
             "data.root=" + root, "cnn " + std::to_string(cnn_steps) + " 4 " + root, 64, cnn_steps, rounds, dir, g);
  // The 99M GPT of the snapshot rows (14 layers of d_model 768, tied embeddings) in bf16
  // autocast, 16 sequences of 256 tokens per step; the dry run a small one.
  const int64_t d = g.dry ? 64 : 768, layers = g.dry ? 2 : 14, heads = g.dry ? 4 : 12, block = g.dry ? 32 : 256,
                batch = g.dry ? 4 : 16;
  const int steps = g.dry ? 10 : 100;
  const std::string shape = "model.d_model=" + std::to_string(d) + " model.num_heads=" + std::to_string(heads) +
                            " model.num_layers=" + std::to_string(layers) + " model.dropout=0 train.batch_size=" +
                            std::to_string(batch) + " data.block_size=" + std::to_string(block) + " eval.batch_size=" +
                            std::to_string(batch) + " optimizer.clip_norm=0 train.autocast=bfloat16";
  const std::string py = "gpt " + std::to_string(steps) + " 4 " + text + " --batch " + std::to_string(batch) + " --block " +
                         std::to_string(block) + " --d-model " + std::to_string(d) + " --heads " + std::to_string(heads) +
                         " --layers " + std::to_string(layers) + " --autocast bfloat16";
  const auto [ours_ms, py_ms] = gpu_rounds("train step GPT " + std::string(g.dry ? "(dry-run size)" : "99M") + " on " +
                                               g.device + " (bf16 autocast, " + std::to_string(batch) + " x " + std::to_string(block) +
                                               " tokens): nnx-train / PyTorch eager",
                                           "char_gpt.yaml", shape, py, batch, steps, rounds, dir, g);
  // MFU: training FLOPs per token 6 N + 12 L T d (Kaplan et al., 2020: forward 2 N + 2 L T d,
  // backward twice that), N every param (the tied embedding is the output projection's matmul).
  const double v = static_cast<double>(byte_vocab(text)), dd = static_cast<double>(d), t = static_cast<double>(block);
  const double n = v * dd + t * dd + static_cast<double>(layers) * (12 * dd * dd + 13 * dd) + 2 * dd;
  const double flops = (6 * n + 12 * static_cast<double>(layers) * t * dd) * t * static_cast<double>(batch);
  const double peak = g.dry ? 0 : bf16_peak_flops();
  if (peak > 0 && std::isfinite(ours_ms))
    rows.push_back({"MFU, GPT 99M, bf16 (" + fmt(n / 1e6, " M params", 1) + ", " + fmt(flops / 1e12, " TFLOP per step", 2) + ")",
                    fmt(100 * flops / (ours_ms / 1e3) / peak, " %", 1), "PyTorch eager " + fmt(100 * flops / (py_ms / 1e3) / peak, " %", 1),
                    "-", "reported", ""});
}

}  // namespace nnx::bench
