#include "nnx/checkpoint/manager.h"

#include <ATen/ATen.h>
#include <signal.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <regex>
#include <set>

#include "nnx/checkpoint/format/directory.h"
#include "nnx/checkpoint/format/schema.h"
#include "nnx/checkpoint/io/fs.h"
#include "nnx/framework/distributed.h"
#include "nnx/framework/error.h"
#include "nnx/framework/log.h"

namespace nnx::checkpoint {

namespace stdfs = std::filesystem;

CheckpointManager::CheckpointManager(stdfs::path directory, CheckpointManagerOptions options)
    : directory_(std::move(directory)), options_(std::move(options)) {
  options_.validate();
  if (!stdfs::exists(directory_)) {
    NNX_CHECK(options_.create && !options_.read_only, "checkpoint directory '", directory_.string(),
              "' does not exist");
    std::error_code ec;
    stdfs::create_directories(directory_, ec);
    NNX_CHECK_IO(!ec, "cannot create checkpoint directory '", directory_.string(), "': ", ec.message());
  }
  NNX_CHECK(stdfs::is_directory(directory_), "'", directory_.string(), "' is not a directory");
  save_policy_ = options_.resolved_save_decision_policy();
  keep_policy_ = options_.resolved_preservation_policy();
  const bool leader = this->leader();
  sync_.process_group = options_.process_group;  // restores are collective, read-only or not
  sync_.write_options.direct_io = options_.direct_io;
  if (!options_.read_only) {
    if (leader) {
      lock_ = std::make_unique<io::DirectoryLock>(directory_);
      if (options_.cleanup_tmp_directories) cleanup_leftovers();
    }
    if (options_.process_group) options_.process_group->barrier();  // nobody saves before the cleanup
    if (options_.enable_async_checkpointing) {
      async_ = std::make_unique<AsyncCheckpointer>();
      async_->process_group = options_.process_group;
      async_->write_options.direct_io = options_.direct_io;
      async_->snapshot_timing = options_.snapshot_timing;
      async_->max_in_flight = options_.busy_policy == BusyPolicy::kSecondBuffer ? 2 : 1;
    }
    if (options_.handle_preemption_signals) {
      install_preemption_handlers();
      signals_installed_ = true;
    }
  }
  if (options_.process_group && options_.process_group->world_size() > 1) {
    // Every rank creates its managers in the same order, so the n-th manager's group matches.
    static std::atomic<int> managers{0};
    decision_group_ = options_.process_group->new_group("ckpt-decisions-" + std::to_string(managers++));
  }
  std::lock_guard<std::mutex> lock(mu_);
  refresh_locked();
}

bool CheckpointManager::leader() const { return !options_.process_group || options_.process_group->rank() == 0; }

CheckpointManager::~CheckpointManager() {
  try {
    close();
  } catch (const std::exception& e) {
    std::cerr << "CheckpointManager: " << e.what() << "\n";
  }
}

void CheckpointManager::close() {
  if (closed_) return;
  closed_ = true;
  std::exception_ptr err;
  if (async_) {
    try {
      async_->finish_previous_save();
    } catch (...) {
      err = std::current_exception();
    }
  }
  if (signals_installed_) uninstall_preemption_handlers();
  lock_.reset();
  if (err) std::rethrow_exception(err);
}

void CheckpointManager::cleanup_leftovers() {
  for (const auto& e : stdfs::directory_iterator(directory_)) {
    const std::string name = e.path().filename().string();
    if (name.find(".tmp-") != std::string::npos || name.find(".deleting-") != std::string::npos) {
      std::error_code ec;
      io::remove_tree(e.path(), ec);
    }
  }
}

std::optional<int64_t> CheckpointManager::parse_step(const std::string& name) const {
  std::string digits = name;
  if (!options_.step_prefix.empty()) {
    const std::string p = options_.step_prefix + "_";
    if (name.compare(0, p.size(), p) != 0) return std::nullopt;
    digits = name.substr(p.size());
  }
  if (digits.empty() || digits.size() > 19 || !std::all_of(digits.begin(), digits.end(), ::isdigit))
    return std::nullopt;
  if (options_.step_format_fixed_length > 0 && static_cast<int>(digits.size()) != options_.step_format_fixed_length)
    return std::nullopt;
  return std::stoll(digits);
}

stdfs::path CheckpointManager::step_path(int64_t step) const {
  std::string num = std::to_string(step);
  if (options_.step_format_fixed_length > static_cast<int>(num.size()))
    num = std::string(static_cast<size_t>(options_.step_format_fixed_length) - num.size(), '0') + num;
  return directory_ / (options_.step_prefix.empty() ? num : options_.step_prefix + "_" + num);
}


namespace {
// The step information of a committed step, from its metadata (time 0 and no metrics when the
// metadata does not parse: restore then reports why).
CheckpointInfo read_info(int64_t step, const stdfs::path& path) {
  CheckpointInfo info{step, 0, nlohmann::json()};
  try {
    auto meta = read_metadata(path);
    auto t = meta.find("time");
    if (t != meta.end() && t->is_number()) info.time = t->get<double>();
    auto m = meta.find("metrics");
    if (m != meta.end() && m->is_object()) info.metrics = *m;
  } catch (const Error&) {
  }
  return info;
}

bool by_step(const CheckpointInfo& a, int64_t step) { return a.step < step; }
}  // namespace

void CheckpointManager::refresh_locked() const {
  std::vector<CheckpointInfo> found;
  std::error_code ec;
  // Entries may vanish while we list (another process's retention): error codes, not throws.
  for (stdfs::directory_iterator it(directory_, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code e2;
    if (!it->is_directory(e2) || e2) continue;
    auto s = parse_step(it->path().filename().string());
    // The rename makes a step appear complete; the metadata check guards against foreign dirs.
    if (!s || !stdfs::exists(it->path() / kMetadataFile, e2)) continue;
    auto known = std::lower_bound(committed_.begin(), committed_.end(), *s, by_step);
    found.push_back(known != committed_.end() && known->step == *s ? *known : read_info(*s, it->path()));
  }
  NNX_CHECK_IO(!ec, "cannot list checkpoint directory '", directory_.string(), "': ", ec.message());
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a.step < b.step; });
  committed_ = std::move(found);
}

void CheckpointManager::reload() {
  std::lock_guard<std::mutex> lock(mu_);
  refresh_locked();
}

void CheckpointManager::add_committed_locked(const CheckpointInfo& info) {
  auto it = std::lower_bound(committed_.begin(), committed_.end(), info.step, by_step);
  if (it != committed_.end() && it->step == info.step) {
    *it = info;  // a reload() already found it on disk
  } else {
    committed_.insert(it, info);
  }
}

std::vector<int64_t> CheckpointManager::steps_locked() const {
  if (options_.read_only) refresh_locked();  // someone else writes this directory
  std::vector<int64_t> steps;
  steps.reserve(committed_.size() + 1);
  for (const auto& c : committed_) steps.push_back(c.step);
  for (const auto& p : pending_)
    if (steps.empty() || steps.back() < p.step) steps.push_back(p.step);
  return steps;
}

std::vector<int64_t> CheckpointManager::all_steps() const {
  std::lock_guard<std::mutex> lock(mu_);
  return steps_locked();
}

std::optional<int64_t> CheckpointManager::latest_step() const {
  std::lock_guard<std::mutex> lock(mu_);
  auto s = steps_locked();
  if (s.empty()) return std::nullopt;
  return s.back();
}

std::vector<CheckpointInfo> CheckpointManager::checkpoints() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (options_.read_only) refresh_locked();
  return committed_;
}

nlohmann::json CheckpointManager::metrics(int64_t step) const {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = std::lower_bound(committed_.begin(), committed_.end(), step, by_step);
    if (it != committed_.end() && it->step == step) return it->metrics;
    for (const auto& p : pending_)
      if (p.step == step) return p.metrics;
  }
  return read_info(step, step_path(step)).metrics;  // not listed here (another process's step)
}

std::optional<int64_t> CheckpointManager::best_step() const {
  if (!options_.best_fn) return std::nullopt;
  MetricCache metric(options_.best_fn);
  std::lock_guard<std::mutex> lock(mu_);
  if (options_.read_only) refresh_locked();
  std::optional<int64_t> best;
  double best_v = 0;
  for (const auto& c : committed_) {
    auto v = metric.get(c);
    if (!v) continue;
    if (!best || (options_.best_mode == "min" ? *v < best_v : *v > best_v)) {
      best = c.step;
      best_v = *v;
    }
  }
  return best;
}

bool CheckpointManager::reached_preemption(int64_t step) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (decision_group_ && agreed_preemption_ && agreed_preemption_->first == step) return agreed_preemption_->second;
  return preemption_signal() != 0;
}

bool CheckpointManager::is_saving_in_progress() const { return async_ && async_->in_progress(); }

bool CheckpointManager::should_save(int64_t step) const {
  if (options_.read_only) return false;
  DecisionContext ctx;
  ctx.is_saving_in_progress = is_saving_in_progress();
  ctx.reached_preemption = preemption_signal() != 0;
  ctx.now = unix_seconds_now();
  const CheckpointInfo info{step, ctx.now, nlohmann::json()};
  bool save = false, save_if_preempted = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const bool newer = (committed_.empty() || committed_.back().step < step) && (pending_.empty() || pending_.back().step < step);
    // The policies see every step of the run so far: the committed ones and the saves in flight
    // (appended for this call, under the lock, instead of copying the list at every step).
    struct AppendPending {
      std::vector<CheckpointInfo>& v;
      size_t n = 0;
      ~AppendPending() { v.erase(v.end() - static_cast<std::ptrdiff_t>(n), v.end()); }
    } append{committed_};
    for (const auto& p : pending_)
      if (newer && (committed_.empty() || committed_.back().step < p.step)) {
        committed_.push_back(p);
        ++append.n;
      }
    const std::vector<CheckpointInfo>* previous = &committed_;
    if (newer && !decision_group_) return save_policy_->should_save(info, *previous, ctx);
    if (newer) {  // both answers, so that the ranks can agree on either
      DecisionContext without = ctx, with = ctx;
      without.reached_preemption = false;
      with.reached_preemption = true;
      save = save_policy_->should_save(info, *previous, without);
      save_if_preempted = save_policy_->should_save(info, *previous, with);
    }
  }
  if (!decision_group_) return false;
  return agree(step, save, save_if_preempted, ctx.reached_preemption);
}

bool CheckpointManager::agree(int64_t step, bool local_save, bool local_save_if_preempted, bool preempted) const {
  // One all-reduce of three counts: ranks that saw a signal, ranks that would not save without
  // one, ranks that would not save with one. Any signal counts; a save needs every rank.
  std::vector<at::Tensor> v = {at::tensor(
      {preempted ? 1.0 : 0.0, local_save ? 0.0 : 1.0, local_save_if_preempted ? 0.0 : 1.0}, at::kDouble)};
  decision_group_->all_reduce_sum(v);
  const bool any_preempted = v[0][0].item<double>() > 0;
  const bool save = any_preempted ? v[0][2].item<double>() == 0 : v[0][1].item<double>() == 0;
  std::lock_guard<std::mutex> lock(mu_);
  agreed_preemption_ = std::make_pair(step, any_preempted);
  return save;
}

bool CheckpointManager::save(int64_t step, const Composite& args, const nlohmann::json& metrics, bool force) {
  if (options_.read_only) {
    log::warn_parts("CheckpointManager on '", directory_.string(), "' is read-only; step ", step, " not saved");
    return false;
  }
  NNX_CHECK(!closed_, "CheckpointManager on '", directory_.string(), "' is closed");
  NNX_CHECK(step >= 0, "checkpoint steps must be >= 0, got ", step);
  std::optional<bool> decided;  // should_save(step), when asked before the wait
  if (!force && async_ && options_.busy_policy == BusyPolicy::kSkip) {
    decided = should_save(step);
    if (!*decided) return false;
    if (previous_save_busy()) {
      log::info("step " + std::to_string(step) + " not saved: the previous save is still being written (busy_policy: skip)");
      return false;
    }
  }
  // One save in flight (surfacing a failed one); with a second buffer set the checkpointer
  // makes room for this save itself.
  if (async_ && options_.busy_policy != BusyPolicy::kSecondBuffer) async_->finish_previous_save();
  const stdfs::path path = step_path(step);
  NNX_CHECK(!stdfs::exists(path), "step ", step, " already exists in '", directory_.string(),
            "'; checkpoints are never overwritten");
  if (!force && !(decided ? *decided : should_save(step))) return false;
  NNX_CHECK(metrics.is_null() || metrics.is_object(), "metrics must be a JSON object");
  const CheckpointInfo info{step, unix_seconds_now(), metrics};
  const nlohmann::json meta = {{"step", step}, {"metrics", metrics}, {"time", info.time}};
  if (!async_) {
    sync_.save(path, args, meta);
    record_committed(info, path);
    return true;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    pending_.push_back(info);  // steps grow: the list stays sorted
  }
  auto committed = [this, info, path] { record_committed(info, path); };
  auto failed = [this, step](std::exception_ptr) {
    std::lock_guard<std::mutex> lock(mu_);
    erase_pending_locked(step);
  };
  try {
    async_->save_async(path, args, meta, committed, failed);
  } catch (...) {  // the snapshot failed: nothing is in flight
    failed(nullptr);
    throw;
  }
  return true;
}

bool CheckpointManager::pending_locked(int64_t step) const {
  return std::any_of(pending_.begin(), pending_.end(), [step](const CheckpointInfo& p) { return p.step == step; });
}

// A save of this manager committed: listed (no longer pending), then retention runs.
void CheckpointManager::record_committed(const CheckpointInfo& info, const stdfs::path& path) {
  const CheckpointInfo saved = committed_info(info, path);
  {
    std::lock_guard<std::mutex> lock(mu_);
    add_committed_locked(saved);
    erase_pending_locked(info.step);
  }
  apply_retention();
}

void CheckpointManager::erase_pending_locked(int64_t step) {
  pending_.erase(std::remove_if(pending_.begin(), pending_.end(), [step](const CheckpointInfo& p) { return p.step == step; }),
                 pending_.end());
}

// BusyPolicy::kSkip: whether this save is skipped. Ranks agree (any rank still writing skips
// them all), since a save is collective.
bool CheckpointManager::previous_save_busy() const {
  if (!async_ || options_.busy_policy != BusyPolicy::kSkip) return false;
  bool busy = async_->in_progress();
  if (decision_group_) {
    std::vector<at::Tensor> v = {at::tensor({busy ? 1.0 : 0.0}, at::kDouble)};
    decision_group_->all_reduce_sum(v);
    busy = v[0][0].item<double>() > 0;
  }
  return busy;
}

CheckpointInfo CheckpointManager::committed_info(const CheckpointInfo& mine, const stdfs::path& path) const {
  // Rank 0 writes the step's metadata (its metrics and time): other ranks read them back, so
  // every rank's retention decides on the same information (only rank 0 evaluates, in nnx-train).
  if (leader()) return mine;
  CheckpointInfo info = read_info(mine.step, path);
  return info.time > 0 ? info : mine;
}

std::vector<stdfs::path> CheckpointManager::retention_locked() {
  if (committed_.size() <= 1) return {};
  const auto keep = keep_policy_->should_preserve(committed_, PreservationContext{unix_seconds_now()});
  NNX_CHECK(keep.size() == committed_.size(), "preservation policy returned ", keep.size(), " flags for ",
            committed_.size(), " steps");
  std::vector<bool> dropped(committed_.size(), false);
  auto forget_dropped = [&] {  // the cache keeps what is still on disk, even after a failed rename
    std::vector<CheckpointInfo> kept;
    kept.reserve(committed_.size());
    for (size_t i = 0; i < committed_.size(); ++i)
      if (!dropped[i]) kept.push_back(std::move(committed_[i]));
    committed_ = std::move(kept);
  };
  std::vector<stdfs::path> gone;
  try {
    for (size_t i = 0; i + 1 < committed_.size(); ++i) {  // the latest is always kept
      if (keep[i]) continue;
      // Other ranks only forget the step: rank 0 deletes it. A step someone removed by hand is
      // just forgotten (renaming it would fail, and fail every later retention with it).
      if (leader() && stdfs::exists(step_path(committed_[i].step))) {
        try {
          gone.push_back(rename_away_locked(committed_[i].step));
        } catch (const Error& e) {  // the step stays (listed, restorable); the save that committed is fine
          log::warn_parts("CheckpointManager on '", directory_.string(), "': cannot delete step ",
                          committed_[i].step, " (kept): ", e.what());
          continue;
        }
      }
      dropped[i] = true;
    }
  } catch (...) {
    forget_dropped();
    throw;
  }
  forget_dropped();
  return gone;
}

void CheckpointManager::apply_retention() {
  std::vector<stdfs::path> gone;
  {
    std::lock_guard<std::mutex> lock(mu_);
    gone = retention_locked();
  }
  remove_renamed(gone);  // outside the lock: listing need not wait for the disk
}

stdfs::path CheckpointManager::rename_away_locked(int64_t step) {
  const stdfs::path path = step_path(step);
  // Rename first: listing never shows a half-deleted step.
  const stdfs::path gone = directory_ / (path.filename().string() + ".deleting-" + io::unique_suffix());
  io::rename_no_replace(path, gone);
  return gone;
}

void CheckpointManager::remove_renamed(const std::vector<stdfs::path>& gone) const {
  for (const auto& g : gone) {
    std::error_code ec;
    io::remove_tree(g, ec);  // a leftover is removed at the next start-up
  }
}

void CheckpointManager::delete_step(int64_t step) {
  if (options_.read_only) {
    log::warn_parts("CheckpointManager on '", directory_.string(), "' is read-only; step ", step, " not deleted");
    return;
  }
  stdfs::path gone;
  {
    std::lock_guard<std::mutex> lock(mu_);
    NNX_CHECK(!pending_locked(step), "step ", step, " of '", directory_.string(),
              "' is being saved; wait_until_finished() first");
    NNX_CHECK(stdfs::exists(step_path(step)), "step ", step, " does not exist in '", directory_.string(), "'");
    gone = rename_away_locked(step);
    auto it = std::lower_bound(committed_.begin(), committed_.end(), step, by_step);
    if (it != committed_.end() && it->step == step) committed_.erase(it);
  }
  remove_renamed({gone});
}

stdfs::path CheckpointManager::set_aside(int64_t step) {
  if (options_.read_only) {
    log::warn_parts("CheckpointManager on '", directory_.string(), "' is read-only; step ", step, " not set aside");
    return {};
  }
  if (options_.process_group) options_.process_group->barrier();  // every rank is done reading it
  stdfs::path aside;
  {
    std::lock_guard<std::mutex> lock(mu_);
    NNX_CHECK(!pending_locked(step), "step ", step, " of '", directory_.string(), "' is being saved; wait_until_finished() first");
    auto it = std::lower_bound(committed_.begin(), committed_.end(), step, by_step);
    NNX_CHECK(it != committed_.end() && it->step == step, "step ", step, " is not a committed step of '", directory_.string(), "'");
    if (leader()) {
      aside = directory_ / (step_path(step).filename().string() + ".unrestorable-" + std::to_string(static_cast<int64_t>(unix_seconds_now())));
      io::rename_no_replace(step_path(step), aside);
    }
    committed_.erase(it);
  }
  if (options_.process_group) options_.process_group->barrier();  // nobody saves the step before it is gone
  return aside;
}

void CheckpointManager::wait_for_pending(int64_t step) const {
  bool pending;
  {
    std::lock_guard<std::mutex> lock(mu_);
    pending = pending_locked(step);
  }
  if (!pending) return;
  async_->wait();
  std::lock_guard<std::mutex> lock(mu_);
  const bool committed = std::binary_search(
      committed_.begin(), committed_.end(), CheckpointInfo{step, 0, {}},
      [](const CheckpointInfo& a, const CheckpointInfo& b) { return a.step < b.step; });
  NNX_CHECK(committed, "step ", step, " of '", directory_.string(),
            "' was being saved and its save failed (wait_until_finished() reports why)");
}

Restored CheckpointManager::restore(std::optional<int64_t> step, const Composite& args) const {
  if (!step) {
    step = latest_step();
    NNX_CHECK(step.has_value(), "no committed checkpoint in '", directory_.string(), "'");
  }
  wait_for_pending(*step);
  return restore_existing(*step, args);
}

bool CheckpointManager::save(int64_t step, const StandardSave& args, const nlohmann::json& metrics, bool force) {
  return save(step, Composite{{kDefaultItem, args}}, metrics, force);
}

State CheckpointManager::restore(std::optional<int64_t> step, const StandardRestore& args) const {
  return restore(step, Composite{{kDefaultItem, args}}).state(kDefaultItem);
}

Restored CheckpointManager::restore_existing(int64_t step, const Composite& args) const {
  const stdfs::path path = step_path(step);
  NNX_CHECK(stdfs::exists(path), "no step ", step, " in '", directory_.string(), "'");
  try {
    return sync_.restore(path, args);
  } catch (const Error& e) {
    // A writer's retention renames a step away before removing it: a step that was there when
    // the restore began and is gone now was deleted under the reader, whatever HDF5 then said.
    NNX_CHECK(stdfs::exists(path), "step ", step, " of '", directory_.string(),
              "' was deleted while being read (retention by the writing manager); restore a newer step (",
              e.what(), ")");
    throw;
  }
}

CheckpointManager::FallbackResult CheckpointManager::restore_newest_valid(const Composite& args) const {
  FallbackResult r;
  auto steps = all_steps();
  NNX_CHECK(!steps.empty(), "no committed checkpoint in '", directory_.string(), "'");
  for (auto it = steps.rbegin(); it != steps.rend(); ++it) {
    try {
      wait_for_pending(*it);
      r.restored = restore_existing(*it, args);
      r.step = *it;
      return r;
    } catch (const Error& e) {
      r.skipped.push_back("step " + std::to_string(*it) + ": " + e.what());
      r.skipped_steps.push_back(*it);
    }
  }
  std::string all;
  for (const auto& s : r.skipped) all += "\n  " + s;
  NNX_CHECK(false, "no step in '", directory_.string(), "' restores:", all);
  return r;
}

void CheckpointManager::wait_until_finished() {
  if (async_) async_->wait_until_finished();
}

}  // namespace nnx::checkpoint
