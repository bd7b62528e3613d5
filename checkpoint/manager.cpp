#include "checkpoint/manager.h"

#include <signal.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <regex>
#include <set>

#include "checkpoint/fs.h"
#include "framework/distributed.h"
#include "framework/error.h"

namespace nnx::checkpoint {

namespace stdfs = std::filesystem;

namespace {
std::atomic<int> g_signal{0};
std::mutex g_sig_mu;
int g_sig_users = 0;
struct sigaction g_old_term, g_old_int;

extern "C" void on_preemption_signal(int sig) { g_signal.store(sig); }

void install_signals() {
  std::lock_guard<std::mutex> lock(g_sig_mu);
  if (g_sig_users++ > 0) return;
  struct sigaction sa {};
  sa.sa_handler = on_preemption_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, &g_old_term);
  sigaction(SIGINT, &sa, &g_old_int);
}

void uninstall_signals() {
  std::lock_guard<std::mutex> lock(g_sig_mu);
  if (--g_sig_users > 0) return;
  sigaction(SIGTERM, &g_old_term, nullptr);
  sigaction(SIGINT, &g_old_int, nullptr);
}
}  // namespace

int preemption_signal() { return g_signal.load(); }
void reset_preemption() { g_signal.store(0); }

void CheckpointManagerOptions::validate() const {
  NNX_CHECK(!max_to_keep || *max_to_keep >= 1, "max_to_keep must be >= 1, got ", *max_to_keep);
  NNX_CHECK(!keep_period || *keep_period >= 1, "keep_period must be >= 1, got ", *keep_period);
  NNX_CHECK(save_interval_steps >= 1, "save_interval_steps must be >= 1, got ", save_interval_steps);
  NNX_CHECK(best_mode == "min" || best_mode == "max", "best_mode must be 'min' or 'max', got '", best_mode, "'");
  NNX_CHECK(step_format_fixed_length >= 0 && step_format_fixed_length <= 20,
            "step_format_fixed_length must be in [0, 20], got ", step_format_fixed_length);
  NNX_CHECK(step_prefix.find('/') == std::string::npos && step_prefix.find(".tmp-") == std::string::npos,
            "invalid step_prefix '", step_prefix, "'");
}

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
  const bool leader = !options_.process_group || options_.process_group->rank() == 0;
  sync_.process_group = options_.process_group;  // restores are collective, read-only or not
  sync_.write_options.direct_io = options_.direct_io;
  if (!options_.read_only) {
    if (leader) {
      lock_ = std::make_unique<fs::DirectoryLock>(directory_);
      if (options_.cleanup_tmp_directories) cleanup_leftovers();
    }
    if (options_.process_group) options_.process_group->barrier();  // nobody saves before the cleanup
    if (options_.enable_async_checkpointing) {
      async_ = std::make_unique<AsyncCheckpointer>();
      async_->process_group = options_.process_group;
      async_->write_options.direct_io = options_.direct_io;
    }
    if (options_.handle_preemption_signals) {
      install_signals();
      signals_installed_ = true;
    }
  }
}

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
      async_->wait_until_finished();
    } catch (...) {
      err = std::current_exception();
    }
  }
  if (signals_installed_) uninstall_signals();
  lock_.reset();
  if (err) std::rethrow_exception(err);
}

void CheckpointManager::cleanup_leftovers() {
  for (const auto& e : stdfs::directory_iterator(directory_)) {
    const std::string name = e.path().filename().string();
    if (name.find(".tmp-") != std::string::npos || name.find(".deleting-") != std::string::npos) {
      std::error_code ec;
      stdfs::remove_all(e.path(), ec);
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

std::vector<int64_t> CheckpointManager::all_steps() const {
  std::vector<int64_t> steps;
  std::error_code ec;
  // Entries may vanish while we list (another process's retention): error codes, not throws.
  for (stdfs::directory_iterator it(directory_, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code e2;
    if (!it->is_directory(e2) || e2) continue;
    auto s = parse_step(it->path().filename().string());
    // The rename makes a step appear complete; the metadata check guards against foreign dirs.
    if (s && stdfs::exists(it->path() / kMetadataFile, e2)) steps.push_back(*s);
  }
  NNX_CHECK_IO(!ec, "cannot list checkpoint directory '", directory_.string(), "': ", ec.message());
  std::sort(steps.begin(), steps.end());
  return steps;
}

std::optional<int64_t> CheckpointManager::latest_step() const {
  auto s = all_steps();
  if (s.empty()) return std::nullopt;
  return s.back();
}

nlohmann::json CheckpointManager::metrics(int64_t step) const {
  try {
    auto meta = read_metadata(step_path(step));
    return meta.value("metrics", nlohmann::json());
  } catch (const Error&) {
    return nlohmann::json();
  }
}

namespace {
std::optional<double> finite_metric(const CheckpointManagerOptions& o, const nlohmann::json& m) {
  if (!o.best_fn || m.is_null()) return std::nullopt;
  double v;
  try {
    v = o.best_fn(m);
  } catch (const std::exception&) {
    return std::nullopt;
  }
  if (!std::isfinite(v)) return std::nullopt;
  return v;
}
}  // namespace

std::optional<int64_t> CheckpointManager::best_step() const {
  std::optional<int64_t> best;
  double best_v = 0;
  for (int64_t s : all_steps()) {
    auto v = finite_metric(options_, metrics(s));
    if (!v) continue;
    bool better = !best || (options_.best_mode == "min" ? *v < best_v : *v > best_v);
    if (better) {
      best = s;
      best_v = *v;
    }
  }
  return best;
}

bool CheckpointManager::reached_preemption(int64_t) const { return g_signal.load() != 0; }

bool CheckpointManager::should_save(int64_t step) const {
  auto latest = latest_step();
  if (latest && step <= *latest) return false;
  // With a process group, a signal seen by this rank alone must not make it save alone: the
  // caller agrees on preemption across ranks (all-reduce reached_preemption()) and forces a save.
  return step % options_.save_interval_steps == 0 || (!options_.process_group && reached_preemption(step));
}

bool CheckpointManager::save(int64_t step, const Composite& args, const nlohmann::json& metrics, bool force) {
  NNX_CHECK(!options_.read_only, "CheckpointManager on '", directory_.string(), "' is read-only");
  NNX_CHECK(!closed_, "CheckpointManager on '", directory_.string(), "' is closed");
  NNX_CHECK(step >= 0, "checkpoint steps must be >= 0, got ", step);
  if (async_) async_->wait_until_finished();  // one save in flight; surfaces a failed one
  const stdfs::path path = step_path(step);
  NNX_CHECK(!stdfs::exists(path), "step ", step, " already exists in '", directory_.string(),
            "'; checkpoints are never overwritten");
  if (!force && !should_save(step)) return false;
  NNX_CHECK(metrics.is_null() || metrics.is_object(), "metrics must be a JSON object");
  nlohmann::json meta = {{"step", step}, {"metrics", metrics}};
  if (async_) {
    async_->save_async(path, args, meta, [this] {
      std::lock_guard<std::mutex> lock(mu_);
      apply_retention();
    });
  } else {
    sync_.save(path, args, meta);
    std::lock_guard<std::mutex> lock(mu_);
    apply_retention();
  }
  return true;
}

void CheckpointManager::apply_retention() {
  if (!options_.max_to_keep) return;
  if (options_.process_group && options_.process_group->rank() != 0) return;  // rank 0 deletes
  auto steps = all_steps();
  if (steps.size() <= 1) return;
  const int keep_n = *options_.max_to_keep;
  std::set<int64_t> keep = {steps.back()};  // the latest is always kept
  if (options_.best_fn) {
    std::vector<std::pair<double, int64_t>> ranked;
    for (int64_t s : steps) {
      auto v = finite_metric(options_, metrics(s));
      if (v) {
        ranked.emplace_back(options_.best_mode == "min" ? *v : -*v, s);
      } else if (options_.keep_checkpoints_without_metrics && metrics(s).is_null()) {
        keep.insert(s);
      }
    }
    std::sort(ranked.begin(), ranked.end());
    for (size_t i = 0; i < ranked.size() && static_cast<int>(i) < keep_n; ++i) keep.insert(ranked[i].second);
  } else {
    for (size_t i = steps.size() > static_cast<size_t>(keep_n) ? steps.size() - keep_n : 0; i < steps.size(); ++i)
      keep.insert(steps[i]);
  }
  for (int64_t s : steps) {
    if (keep.count(s)) continue;
    if (options_.keep_period && s % *options_.keep_period == 0) continue;
    delete_step(s);
  }
}

void CheckpointManager::delete_step(int64_t step) {
  NNX_CHECK(!options_.read_only, "CheckpointManager on '", directory_.string(), "' is read-only");
  const stdfs::path path = step_path(step);
  NNX_CHECK(stdfs::exists(path), "step ", step, " does not exist in '", directory_.string(), "'");
  // Rename first: listing never shows a half-deleted step.
  const stdfs::path gone = directory_ / (path.filename().string() + ".deleting-" + fs::unique_suffix());
  fs::rename_no_replace(path, gone);
  std::error_code ec;
  stdfs::remove_all(gone, ec);
}

Restored CheckpointManager::restore(std::optional<int64_t> step, const Composite& args) const {
  if (!step) {
    step = latest_step();
    NNX_CHECK(step.has_value(), "no committed checkpoint in '", directory_.string(), "'");
  }
  const stdfs::path path = step_path(*step);
  NNX_CHECK(stdfs::exists(path), "no step ", *step, " in '", directory_.string(), "'");
  return sync_.restore(path, args);
}

CheckpointManager::FallbackResult CheckpointManager::restore_newest_valid(const Composite& args) const {
  FallbackResult r;
  auto steps = all_steps();
  NNX_CHECK(!steps.empty(), "no committed checkpoint in '", directory_.string(), "'");
  for (auto it = steps.rbegin(); it != steps.rend(); ++it) {
    try {
      r.restored = sync_.restore(step_path(*it), args);
      r.step = *it;
      return r;
    } catch (const Error& e) {
      r.skipped.push_back("step " + std::to_string(*it) + ": " + e.what());
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
