// What every nnx-bench row uses: the table's rows, timing and statistics, and the anchors'
// file helpers. Each row family is a rows_*.cpp file (tools/bench/rows.h lists them).
#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "nnx/framework/state.h"

namespace nnx::bench {

namespace stdfs = std::filesystem;
using Clock = std::chrono::steady_clock;

/// One line of the table: the contender's figure, the anchor's, their ratio, the target and
/// whether it was met ("ok", "MISSED", or empty for reported rows).
struct Row {
  std::string name, ours, anchor, ratio, target, verdict;
};
/// char_gpt.yaml scaled to about 100 M params: 14 layers of d_model 768 (12 d^2 each) and tied
/// embeddings over the GPL's characters: 99 M; batch 4 x 64 tokens.
inline constexpr const char* kGpt99mOverrides =
    "model.d_model=768 model.num_heads=12 model.num_layers=14 model.dropout=0 train.batch_size=4 "
    "data.block_size=64 eval.batch_size=4 optimizer.clip_norm=0";

/// The table, in the order rows were measured (printed last by main).
extern std::vector<Row> rows;

/// Seconds since `t` (steady clock).
double secs_since(Clock::time_point t);
/// The median (upper middle for an even count) of `v`; `v` must not be empty.
double median(std::vector<double> v);
/// The value at fraction `q` of the sorted values (nearest rank): 0.25 and 0.75 give the quartiles.
double quantile(std::vector<double> v, double q);

/// Seconds `f()` took.
template <class F>
double time_once(F&& f) {
  auto s = Clock::now();
  f();
  return secs_since(s);
}

/// Median seconds of `reps` calls `f(i)`.
template <class F>
double median_time(int reps, F&& f) {
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) t.push_back(time_once([&] { f(i); }));
  return median(t);
}

/// `v` with `prec` decimals and `unit` appended.
std::string fmt(double v, const char* unit, int prec = 3);
/// Adds a row of `ours` against `anchor` (ratio ours / anchor), met when the ratio is at most
/// `target` (at least, with !lower_is_better); `target` <= 0: reported only.
void add(const std::string& name, double ours, double anchor, const std::string& unit, const std::string& anchor_name,
         double target, bool lower_is_better = true);
/// A row from alternating rounds: medians of each contender and the median of per-round ratios.
void add_rounds(const std::string& name, const std::vector<double>& ours, const std::vector<double>& anchor,
                const std::string& unit, const std::string& anchor_name, double target);
/// A field of /proc/self/status in kB ("VmHWM:", "VmRSS:"); -1 when absent.
int64_t rss_kb(const char* field);
/// fsync of the file at `p`.
void fsync_file(const std::string& p);
/// The standard output of `cmd` (popen).
std::string run_capture(const std::string& cmd);
/// The anchor of the save rows: the tensors' bytes written one after another, then fsync.
void write_raw_fsync(const stdfs::path& p, const std::vector<at::Tensor>& tensors);
/// `n` fp32 Params of `numel` random values each, at layer<i>/kernel.
State make_state(int n, int64_t numel);
/// Drops a file from the page cache (its dirty pages written first): the next read is cold.
void evict_from_page_cache(const stdfs::path& f);
/// Runs every contender once per round, in a new random order each round (seeded by `seed`, so
/// every run draws the same orders): no contender always follows the same one.
void run_shuffled_rounds(const std::vector<std::function<void()>>& contenders, int rounds, uint32_t seed = 2026);
/// CPU seconds (user + system, all threads) of this process so far.
double cpu_seconds();

}  // namespace nnx::bench
