#include "nnx/checkpoint/emergency/checkpoint_manager.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "nnx/checkpoint/emergency/local_tier.h"
#include "nnx/checkpoint/manager.h"
#include "nnx/framework/distributed.h"
#include "nnx/framework/error.h"
#include "nnx/framework/log.h"

namespace nnx::checkpoint::emergency {

namespace stdfs = std::filesystem;

namespace {

// Whether `flag` holds on any rank (every rank calls it).
// The message of a caught exception.
std::string message_of(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return x.what();
  } catch (...) {
    return "an unknown exception";
  }
}

bool any_rank(distributed::ProcessGroup* pg, bool flag) {
  std::vector<at::Tensor> t = {at::tensor({flag ? int64_t(1) : int64_t(0)}, at::kLong)};
  if (pg) pg->all_reduce_max(t);
  return t[0].item<int64_t>() != 0;
}

}  // namespace

CheckpointManager::CheckpointManager(stdfs::path persistent_directory, CheckpointManagerOptions options,
                                     std::shared_ptr<distributed::ProcessGroup> pg)
    : pg_(std::move(pg)) {
  // A group of its own: the persistent tier's background commits must not interleave with the
  // caller's collectives, nor with the local tier's.
  if (!options.persistent.process_group && pg_) options.persistent.process_group = pg_->new_group("persistent-tier");
  persistent_ = std::make_unique<checkpoint::CheckpointManager>(persistent_directory, options.persistent);
  if (options.local.directory.empty()) options.local.directory = default_local_directory(persistent_directory).string();
  local_ = std::make_unique<LocalTier>(options.local, pg_ ? pg_->rank() : 0, pg_ ? pg_->world_size() : 1, pg_);
}

CheckpointManager::~CheckpointManager() = default;

bool CheckpointManager::should_save(int64_t step) const { return persistent_->should_save(step); }

bool CheckpointManager::local_due(int64_t step) const { return local_->due(step); }

std::optional<int64_t> CheckpointManager::latest_step() const { return persistent_->latest_step(); }

bool CheckpointManager::reached_preemption(int64_t step) const { return persistent_->reached_preemption(step); }

bool CheckpointManager::save(int64_t step, const TierArgs& args, const nlohmann::json& metrics, bool force) {
  if (local_->due(step)) local_->maybe_save(step, args.local);  // collective when due, saved or not here
  newest_ = std::max(newest_, step);
  if (!args.persistent) return false;
  return persistent_->save(step, *args.persistent, metrics, force);
}

bool CheckpointManager::save(int64_t step, const Composite& args, const nlohmann::json& metrics, bool force) {
  TierArgs both;
  if (local_->due(step)) both.local = args;
  if (force || persistent_->should_save(step)) both.persistent = args;
  return save(step, both, metrics, force);
}

std::optional<RestoredStep> CheckpointManager::restore(const Composite& args, const RestoreOptions& options) {
  std::optional<RestoredStep> r;
  if (!options.step && local_->configured()) r = restore_local(args);
  if (!r) r = restore_persistent(args, options);
  if (r) newest_ = r->step;
  discard_newer_than(r ? r->step : -1);  // a timeline this run does not continue
  return r;
}

// The local tier's newest step that every rank has (or gets from a peer's replica), when no
// older than the persistent tier's latest: each rank restores its own state from it. When any
// rank cannot (a corrupt or unreadable copy), every rank tries the next older such step, then
// the persistent tier: an older local step is still newer than what the persistent tier holds.
std::optional<RestoredStep> CheckpointManager::restore_local(const Composite& args) {
  const std::optional<int64_t> not_before = persistent_->latest_step();
  std::optional<int64_t> below;
  for (;;) {
    const std::optional<LocalTier::RestorePlan> plan = local_->prepare_restore(not_before, below);
    if (!plan) return std::nullopt;
    std::exception_ptr failure = plan->failure;
    RestoredStep r;
    if (!failure) try {
        r.restored = local_->restore(plan->step, args);
      } catch (const Error&) {
        failure = std::current_exception();
      }
    if (!any_rank(pg_.get(), failure != nullptr)) {
      r.step = plan->step;
      r.path = local_->step_path(plan->step);
      r.from_local_tier = true;
      return r;
    }
    log::warn_parts("checkpoint.local: step ", plan->step, " does not restore on every rank",
                    failure ? " (here: " + message_of(failure) + ")" : std::string(),
                    "; trying an older local step, then the persistent tier");
    below = plan->step;
  }
}

std::optional<RestoredStep> CheckpointManager::restore_persistent(const Composite& args, const RestoreOptions& options) {
  const std::optional<int64_t> at = options.step ? options.step : persistent_->latest_step();
  if (!at) return std::nullopt;
  if (options.before_persistent_restore) options.before_persistent_restore(*at);
  RestoredStep r;
  r.step = *at;
  if (!options.step && options.fallback_to_verified) {
    auto fb = persistent_->restore_newest_valid(args);
    for (const auto& s : fb.skipped) log::warn_parts("cannot resume from ", s);
    if (!fb.skipped.empty()) log::warn_parts("falling back to step ", fb.step);
    // A step that does not restore must not stay as the latest or best one (retention would
    // keep it over the good step), nor block the save of that step anew: set aside, kept.
    for (int64_t s : fb.skipped_steps) {
      const auto aside = persistent_->set_aside(s);
      if (!pg_ || pg_->rank() == 0)
        log::warn_parts("step ", s, " set aside as ", aside.string(), " (kept for inspection; this run saves step ", s, " anew)");
    }
    r.step = fb.step;
    r.restored = std::move(fb.restored);
  } else {
    r.restored = persistent_->restore(*at, args);
  }
  r.path = persistent_->step_path(r.step);
  return r;
}

void CheckpointManager::wait_until_finished() {
  local_->wait_until_finished();
  persistent_->wait_until_finished();
}

void CheckpointManager::stop() {
  wait_until_finished();
  local_->stop_replicas();  // every rank stops here (the decision is agreed): none is left sending
}

void CheckpointManager::discard_newer_than(int64_t step) { local_->discard_newer_than(step); }

// The ranks agree, as the save that follows is collective. Only a local tier's removal can lose
// a step: without one, close() saves nothing.
bool CheckpointManager::persistent_lacks_newest() const {
  bool lacks = false;
  if (local_->configured() && newest_ >= 0) {
    const auto steps = persistent_->all_steps();
    lacks = std::find(steps.begin(), steps.end(), newest_) == steps.end();
  }
  return any_rank(pg_.get(), lacks);
}

std::optional<int64_t> CheckpointManager::close(const std::function<Composite(int64_t)>& state_at, const nlohmann::json& metrics) {
  if (closed_) return std::nullopt;
  persistent_->wait_until_finished();
  std::optional<int64_t> saved;
  if (persistent_lacks_newest()) {
    if (!state_at) {
      log::warn_parts("checkpoint.local: step ", newest_, " is not in the persistent tier; the local tier is kept "
                      "(pass close() the state to save it there)");
      local_->wait_until_finished();
      local_->stop_replicas();
      persistent_->close();
      closed_ = true;
      return std::nullopt;
    }
    persistent_->save(newest_, state_at(newest_), metrics, /*force=*/true);
    persistent_->wait_until_finished();
    saved = newest_;
  }
  local_->remove();
  persistent_->close();
  closed_ = true;
  return saved;
}

}  // namespace nnx::checkpoint::emergency
