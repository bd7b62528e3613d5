#include "tools/trainer/local_tier.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>

#include "nnx/checkpoint/io/fs.h"
#include "nnx/framework/distributed.h"
#include "nnx/framework/error.h"
#include "nnx/framework/log.h"

namespace nnx::trainer {

namespace stdfs = std::filesystem;

namespace {

}  // namespace

// /dev/shm/nnx-local/<run dir's name>-<FNV-1a of its absolute path>: per run, stable across
// restarts of that run, and in memory where the host has /dev/shm.
stdfs::path default_local_directory(const stdfs::path& run_dir) {
  const std::string abs = stdfs::absolute(run_dir).lexically_normal().string();
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : abs) h = (h ^ c) * 1099511628211ull;
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(h));
  std::error_code ec;
  const stdfs::path base = stdfs::is_directory("/dev/shm", ec) ? stdfs::path("/dev/shm") : stdfs::temp_directory_path();
  return base / "nnx-local" / (stdfs::absolute(run_dir).lexically_normal().filename().string() + "-" + hex);
}

namespace {

// The smallest of each rank's `v` (max of the negations: the process group reduces sum and max).
int64_t all_min(distributed::ProcessGroup* pg, int64_t v) {
  if (!pg) return v;
  std::vector<at::Tensor> t = {at::tensor({-v}, at::kLong)};
  pg->all_reduce_max(t);
  return -t[0].item<int64_t>();
}

}  // namespace

LocalTier::LocalTier(const LocalTierConfig& cfg, const stdfs::path& run_dir, int rank, int world_size) {
  if (cfg.save_interval_steps <= 0) return;
  const stdfs::path root = cfg.directory.empty() ? default_local_directory(run_dir) : stdfs::path(cfg.directory);
  dir_ = root / ("rank-" + std::to_string(rank) + "-of-" + std::to_string(world_size));
  checkpoint::CheckpointManagerOptions mo;
  mo.max_to_keep = cfg.max_to_keep;
  mo.save_interval_steps = cfg.save_interval_steps;
  mo.handle_preemption_signals = false;  // the persistent tier's manager handles them
  mo.direct_io = false;                  // tmpfs refuses O_DIRECT
  mo.enable_async_checkpointing = cfg.async;
  // nnx-train's writers pass the write fence, so the copy may run beside the next step; a save
  // that finds the previous one still being written is skipped rather than waited for.
  mo.snapshot_timing = checkpoint::io::SnapshotTiming::kDeferred;
  mo.busy_policy = checkpoint::BusyPolicy::kSkip;
  try {  // a tier that cannot be made costs the fast tier, never the run
    stdfs::create_directories(dir_);
    manager_ = std::make_unique<checkpoint::CheckpointManager>(dir_, mo);
  } catch (const std::exception& e) {
    log::warn_parts("checkpoint.local: cannot use '", dir_.string(), "' (", e.what(),
                    "); training goes on with the persistent tier only");
    manager_.reset();
  }
}

LocalTier::~LocalTier() {
  try {
    wait_until_finished();
  } catch (...) {  // already a warning; a destructor reports nothing else
  }
}

void LocalTier::maybe_save(int64_t step, const checkpoint::Composite& args, bool force) {
  if (!manager_ || (!force && !manager_->should_save(step))) return;
  try {
    manager_->save(step, args, nlohmann::json::object(), force);
    failing_ = false;
  } catch (const std::exception& e) {  // a full /dev/shm costs the fast tier, never the run
    if (!failing_) log::warn_parts("checkpoint.local: the local save of step ", step, " failed (", e.what(),
                                   "); training goes on with the persistent tier");
    failing_ = true;
  }
}

std::optional<int64_t> LocalTier::newest_common_step(distributed::ProcessGroup* pg) const {
  std::vector<int64_t> mine = manager_ ? manager_->all_steps() : std::vector<int64_t>{};
  std::sort(mine.rbegin(), mine.rend());
  // Each round: the smallest of the ranks' newest candidates at most `bound`, kept when every
  // rank has it. The bound drops every round, so this ends after at most max_to_keep rounds.
  for (int64_t bound = INT64_MAX;;) {
    auto it = std::find_if(mine.begin(), mine.end(), [&](int64_t s) { return s <= bound; });
    const int64_t proposed = all_min(pg, it == mine.end() ? -1 : *it);
    if (proposed < 0) return std::nullopt;
    const bool have = std::find(mine.begin(), mine.end(), proposed) != mine.end();
    if (all_min(pg, have ? 1 : 0) == 1) return proposed;
    bound = proposed - 1;
  }
}

checkpoint::Restored LocalTier::restore(int64_t step, const checkpoint::Composite& args) const {
  NNX_CHECK(manager_ != nullptr, "checkpoint.local is off");
  return manager_->restore(step, args);
}

void LocalTier::wait_until_finished() {
  if (!manager_) return;
  try {
    manager_->wait_until_finished();
  } catch (const std::exception& e) {
    if (!failing_) log::warn_parts("checkpoint.local: a local save failed (", e.what(), ")");
    failing_ = true;
  }
}

void LocalTier::remove() {
  if (!manager_) return;
  wait_until_finished();
  manager_.reset();
  std::error_code ec;
  checkpoint::fs::remove_tree(dir_, ec);
  stdfs::remove(dir_.parent_path(), ec);  // the run's folder, once every rank removed its own
}

}  // namespace nnx::trainer
