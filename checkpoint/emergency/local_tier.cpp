#include "nnx/checkpoint/emergency/local_tier.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <chrono>
#include <mutex>
#include <thread>
#include <set>

#include "nnx/checkpoint/format/schema.h"
#include "nnx/checkpoint/io/fs.h"
#include "nnx/framework/distributed.h"
#include "nnx/framework/error.h"
#include "nnx/framework/log.h"
#include "nnx/checkpoint/emergency/step_transfer.h"

namespace nnx::checkpoint::emergency {

namespace stdfs = std::filesystem;

stdfs::path default_local_root() {
  std::error_code ec;
  return (stdfs::is_directory("/dev/shm", ec) ? stdfs::path("/dev/shm") : stdfs::temp_directory_path()) / "nnx-local";
}

// <root>/<run dir's name>-<FNV-1a of its absolute path>: per run, stable across restarts of
// that run, and in memory where the host has /dev/shm.
stdfs::path default_local_directory(const stdfs::path& run_dir) {
  const std::string abs = stdfs::absolute(run_dir).lexically_normal().string();
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : abs) h = (h ^ c) * 1099511628211ull;
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(h));
  return default_local_root() / (stdfs::absolute(run_dir).lexically_normal().filename().string() + "-" + hex);
}

/// The steps a local tier keeps beyond its max_to_keep newest: the newest step every peer holds a
/// replica of, and the one being replicated. Changed by the training thread, read by retention
/// on the async save's thread.
class ProtectedSteps : public checkpoint::PreservationPolicy {
 public:
  void set(std::set<int64_t> steps) {
    std::lock_guard<std::mutex> l(mu_);
    steps_ = std::move(steps);
  }
  std::vector<bool> should_preserve(const std::vector<checkpoint::CheckpointInfo>& c,
                                    const checkpoint::PreservationContext&) const override {
    std::lock_guard<std::mutex> l(mu_);
    std::vector<bool> keep;
    for (const auto& info : c) keep.push_back(steps_.count(info.step) > 0);
    return keep;
  }

 private:
  mutable std::mutex mu_;
  std::set<int64_t> steps_;
};

LocalTier::LocalTier(const LocalCheckpointOptions& cfg, int rank, int world_size, std::shared_ptr<distributed::ProcessGroup> pg)
    : pg_(std::move(pg)) {
  if (cfg.save_interval_steps <= 0) return;
  NNX_CHECK(!cfg.directory.empty(), "the local tier needs a directory (default_local_directory() gives one per run)");
  configured_ = true;
  interval_ = cfg.save_interval_steps;
  listed_ = cfg.max_to_keep + 2;  // a folder's most: max_to_keep and the two protected steps
  const stdfs::path root = cfg.directory;
  default_directory_ = stdfs::absolute(root).lexically_normal().parent_path() == default_local_root();
  dir_ = root / ("rank-" + std::to_string(rank) + "-of-" + std::to_string(world_size));
  find_other_world_sizes(root, world_size);
  checkpoint::CheckpointManagerOptions mo;
  protected_ = std::make_shared<ProtectedSteps>();
  retention_ = std::make_shared<checkpoint::AnyPreservationPolicy>(
      std::vector<checkpoint::PreservationPolicyPtr>{std::make_shared<checkpoint::LatestN>(cfg.max_to_keep), protected_});
  mo.preservation_policy = retention_;
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
  start_replicas(cfg, world_size);
}

// Folders of this run's local tier at another world size (rank-<r>-of-<m>, m != world_size):
// never read by this run (the persistent tier restores at any world size), so they only hold
// memory. Said once, and removed when this run finishes.
void LocalTier::find_other_world_sizes(const stdfs::path& root, int world_size) {
  std::error_code ec;
  const std::string mine = "-of-" + std::to_string(world_size);
  for (stdfs::directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.rfind("rank-", 0) != 0 || name.find("-of-") == std::string::npos) continue;
    if (name.size() >= mine.size() && name.compare(name.size() - mine.size(), mine.size(), mine) == 0) continue;
    other_world_sizes_.push_back(it->path());
    log::warn_parts("checkpoint.local: '", it->path().string(), "' is this run's local tier at another world size, "
                    "which a run at world size ", world_size, " does not read; it is removed when this run finishes");
  }
}

// Every rank makes the replication's group (a collective), also one whose folder failed: it
// still receives (and discards) what its peers send.
void LocalTier::start_replicas(const LocalCheckpointOptions& cfg, int world_size) {
  n_replicas_ = pg_ ? std::min(cfg.replicas, world_size - 1) : 0;
  if (pg_ && pg_->rank() == 0 && cfg.replicas > n_replicas_)
    log::warn_parts("checkpoint.local.replicas = ", cfg.replicas, " at world_size ", world_size, ": ", n_replicas_,
                    " made (each rank's copies go to the other ranks, at most world_size - 1)");
  if (n_replicas_ <= 0) return;
  auto group = pg_->new_group("local-replicas");
  try {
    replicas_ = std::make_unique<PeerReplicas>(group, dir_, n_replicas_, retention_);
  } catch (const std::exception& e) {
    log::warn_parts("checkpoint.local: cannot keep replicas in '", dir_.string(), "' (", e.what(), ")");
  }
}

LocalTier::~LocalTier() {
  try {
    wait_until_finished();
  } catch (...) {  // already a warning; a destructor reports nothing else
  }
}

void LocalTier::maybe_save(int64_t step, const std::optional<checkpoint::Composite>& args) {
  const bool saved = args && save_here(step, *args);
  if (n_replicas_ > 0 && pg_) agree_and_replicate(step, saved);
}

// This rank's save of `step`; false when skipped or failed.
bool LocalTier::save_here(int64_t step, const checkpoint::Composite& args) {
  if (!manager_ || !manager_->should_save(step)) return false;
  ++saves_due_;
  if (manager_->is_saving_in_progress()) {  // training never waits for the fast tier
    ++saves_skipped_;
    log::debug("checkpoint.local: step " + std::to_string(step) + " not saved: the previous local save is still being written");
    return false;
  }
  try {
    const bool saved = manager_->save(step, args, nlohmann::json::object());
    failing_ = false;
    saves_written_ += saved ? 1 : 0;
    return saved;
  } catch (const std::exception& e) {  // a full /dev/shm costs the fast tier, never the run
    if (!failing_) log::warn_parts("checkpoint.local: the local save of step ", step, " failed (", e.what(),
                                   "); training goes on with the persistent tier");
    failing_ = true;
    return false;
  }
}

// A collective: one all-reduce of three counts (ranks whose sender is busy, ranks that did not
// save `step`, ranks whose last offer some peer has not confirmed). While any transfer runs
// nothing changes. Else the last offer, when every rank's peers confirmed it, becomes the step
// a replaced host can always get back (replicated_), and `step` is offered when every rank saved it.
void LocalTier::agree_and_replicate(int64_t step, bool saved) {
  const bool busy = !replicas_ || replicas_->busy();
  const bool confirmed = replicas_ && replicas_->confirmed_step() == last_offered_;
  std::vector<at::Tensor> counts = {at::tensor({busy ? 1.0 : 0.0, saved ? 0.0 : 1.0, confirmed ? 0.0 : 1.0}, at::kDouble)};
  pg_->all_reduce_sum(counts);
  const double* c = counts[0].data_ptr<double>();
  if (c[0] > 0) return;
  if (c[2] == 0 && last_offered_ >= 0) replicated_ = last_offered_;
  if (c[1] == 0) replicate(step);
  protect();
}

// Retention keeps replicated_ and the step being replicated beyond max_to_keep, in this rank's
// folder and in the replicas it holds (the same step numbers: the ranks replicate agreed steps).
void LocalTier::protect() {
  std::set<int64_t> keep;
  for (int64_t s : {replicated_, last_offered_})
    if (s >= 0) keep.insert(s);
  protected_->set(std::move(keep));
}

// Offers `step` to the peers once it committed (protected before the sender can read it).
void LocalTier::replicate(int64_t step) {
  last_offered_ = step;
  protect();
  replicas_->offer(step, manager_->step_path(step), [this, step] {
    try {
      manager_->wait_until_finished();
    } catch (const std::exception& e) {  // this wait took the failure: report it here
      if (!async_failing_.exchange(true))
        log::warn_parts("checkpoint.local: the local save of step ", step, " failed (", e.what(),
                        "); training goes on with the persistent tier");
      return false;
    }
    async_failing_ = false;
    std::error_code ec;
    return stdfs::exists(manager_->step_path(step) / checkpoint::kMetadataFile, ec);
  });
}

// Per rank: [0] = this rank's steps (none when its tier is off), [k] = the steps of rank
// (rank - k) mod world_size it holds as replicas; all of each (a folder holds at most listed_).
std::vector<std::vector<std::vector<int64_t>>> LocalTier::gather_holdings() const {
  std::vector<std::vector<int64_t>> mine(1 + n_replicas_);
  if (manager_) mine[0] = manager_->all_steps();
  if (replicas_)
    for (int k = 1; k <= n_replicas_; ++k) mine[k] = replicas_->steps_of(replicas_->sources()[k - 1]);
  const int64_t width = (1 + n_replicas_) * listed_;
  at::Tensor t = at::full({width}, -1, at::kLong);
  int64_t* row = t.data_ptr<int64_t>();
  for (size_t slot = 0; slot < mine.size(); ++slot) {
    std::sort(mine[slot].rbegin(), mine[slot].rend());
    for (size_t i = 0; i < mine[slot].size() && i < size_t(listed_); ++i) row[slot * listed_ + i] = mine[slot][i];
  }
  if (!manager_) row[0] = -2;  // this rank's tier is off: it could not receive or restore a step
  std::vector<at::Tensor> all = {t};
  if (pg_) {
    all.assign(pg_->world_size(), at::Tensor());
    for (auto& a : all) a = at::empty_like(t);
    pg_->all_gather(all, t);
  }
  std::vector<std::vector<std::vector<int64_t>>> out(all.size(), std::vector<std::vector<int64_t>>(1 + n_replicas_));
  for (size_t r = 0; r < all.size(); ++r) {
    const int64_t* theirs = all[r].data_ptr<int64_t>();
    if (theirs[0] == -2) {  // no list at all: a tier that is off
      out[r].clear();
      continue;
    }
    for (int64_t i = 0; i < width; ++i)
      if (theirs[i] >= 0) out[r][static_cast<size_t>(i / listed_)].push_back(theirs[i]);
  }
  return out;
}

namespace {
bool holds(const std::vector<int64_t>& steps, int64_t s) { return std::find(steps.begin(), steps.end(), s) != steps.end(); }

// The slot k (1..replicas) of the first peer holding rank r's replica of `step`; 0: r has its
// own copy; -1: nobody has it.
int source_of(const std::vector<std::vector<std::vector<int64_t>>>& h, int r, int64_t step) {
  if (holds(h[r][0], step)) return 0;
  const int n = static_cast<int>(h.size());
  for (size_t k = 1; k < h[r].size(); ++k)
    if (holds(h[(r + static_cast<int>(k)) % n][k], step)) return static_cast<int>(k);
  return -1;
}
}  // namespace

std::optional<LocalTier::RestorePlan> LocalTier::prepare_restore(std::optional<int64_t> not_before,
                                                                 std::optional<int64_t> below) {
  const auto h = gather_holdings();
  const int n = static_cast<int>(h.size());
  for (const auto& rank : h)
    if (rank.empty()) return std::nullopt;  // a rank whose tier is off can restore nothing from it
  std::vector<int64_t> candidates;
  for (const auto& rank : h)
    for (const auto& slot : rank) candidates.insert(candidates.end(), slot.begin(), slot.end());
  std::sort(candidates.rbegin(), candidates.rend());
  std::optional<int64_t> step;
  for (int64_t s : candidates) {  // the newest step every rank can get (own copy or a peer's)
    if (not_before && s < *not_before) break;
    if (below && s >= *below) continue;
    bool all = true;
    for (int r = 0; r < n && all; ++r) all = source_of(h, r, s) >= 0;
    if (all) {
      step = s;
      break;
    }
  }
  if (!step) {
    if (!candidates.empty() && (!pg_ || pg_->rank() == 0))
      log::info("checkpoint.local: no local step that every rank can get" +
                (not_before ? " at or after the persistent tier's step " + std::to_string(*not_before) : std::string()) +
                "; resuming from the persistent tier");
    return std::nullopt;
  }
  // Kept (here and in the replicas of it this rank holds) until an offer every peer confirmed.
  replicated_ = last_offered_ = *step;
  if (protected_) protect();
  RestorePlan plan{*step, nullptr};
  for (int r = 0; r < n; ++r)  // every rank walks the same transfers in the same order
    if (const int k = source_of(h, r, *step); k > 0) {
      std::exception_ptr e = fetch_from_peer(*step, r, (r + k) % n, k);
      if (!plan.failure) plan.failure = e;
    }
  return plan;
}

// Rank `holder` sends its replica of rank `rank`'s `step` (slot k) to `rank`, which commits it
// in its own folder; other ranks do nothing. Returns this rank's error (null: none).
std::exception_ptr LocalTier::fetch_from_peer(int64_t step, int rank, int holder, int slot) {
  const int me = pg_->rank(), tag = 1 + rank;
  try {
    if (me == holder) {
      NNX_CHECK(replicas_ != nullptr, "no replicas here");
      send_step(*pg_, replicas_->step_path(replicas_->sources()[slot - 1], step), step, rank, tag);
    } else if (me == rank) {
      NNX_CHECK(manager_ != nullptr, "checkpoint.local is off here");
      const auto got = recv_step(*pg_, holder, tag, [&](int64_t s) {
        NNX_CHECK(s == step, "rank ", holder, " sent step ", s, " instead of ", step);
        return manager_->step_path(s);
      });
      manager_->reload();
      log::info("checkpoint.local: this rank's step " + std::to_string(step) + " came from its replica on rank " +
                std::to_string(holder) + " (" + std::to_string(got.bytes) + " bytes)");
    }
  } catch (const std::exception&) {
    return std::current_exception();
  }
  return nullptr;
}

checkpoint::Restored LocalTier::restore(int64_t step, const checkpoint::Composite& args) const {
  NNX_CHECK(manager_ != nullptr, "checkpoint.local is off");
  return manager_->restore(step, args);
}

void LocalTier::wait_for_replicas() const {
  while (replicas_ && replicas_->busy()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
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

void LocalTier::stop_replicas() {
  if (replicas_) {  // every rank's last transfer is received before anyone stops receiving
    replicas_->stop_sending();
    if (pg_) pg_->barrier();
    replicas_->stop_receiving();
    replicas_.reset();
  } else if (n_replicas_ > 0 && pg_) {
    pg_->barrier();  // the ranks with replicas wait for this one
  }
  n_replicas_ = 0;
}

// A step newer than the one the run resumed from is from a run that went on past it: a new
// save of that number must not be refused, nor an old copy mixed with new ones later.
void LocalTier::discard_newer_than(int64_t step) {
  if (manager_) delete_steps_newer_than(*manager_, step);
  if (replicas_) replicas_->discard_newer_than(step);
}

void LocalTier::remove() {
  wait_until_finished();
  stop_replicas();
  if (!manager_) return;
  manager_.reset();
  std::error_code ec;
  checkpoint::io::remove_tree(dir_, ec);
  for (const auto& other : other_world_sizes_) checkpoint::io::remove_tree(other, ec);  // (another rank's may race)
  stdfs::remove(dir_.parent_path(), ec);  // the run's folder, once every rank removed its own
  if (default_directory_) stdfs::remove(dir_.parent_path().parent_path(), ec);  // nnx-local/, once empty
}

}  // namespace nnx::checkpoint::emergency
