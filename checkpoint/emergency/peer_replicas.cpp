#include "nnx/checkpoint/emergency/peer_replicas.h"

#include <pthread.h>

#include <chrono>
#include <string>

#include "nnx/checkpoint/manager.h"
#include "nnx/framework/distributed.h"
#include "nnx/framework/error.h"
#include "nnx/framework/log.h"
#include "nnx/checkpoint/emergency/step_transfer.h"

namespace nnx::checkpoint::emergency {

namespace stdfs = std::filesystem;

namespace {
// Idle receivers look for announcements this often (one store request per source).
constexpr auto kPollInterval = std::chrono::milliseconds(20);
// Each source's transfers use their own tag (messages of one pair and tag arrive in order).
int tag_of(int source) { return 1 + source; }
}  // namespace

PeerReplicas::PeerReplicas(std::shared_ptr<distributed::ProcessGroup> group, stdfs::path host_dir, int replicas,
                           checkpoint::PreservationPolicyPtr retention)
    : pg_(std::move(group)), host_dir_(std::move(host_dir)), replicas_(replicas) {
  NNX_CHECK(replicas_ >= 1 && replicas_ < pg_->world_size(), "checkpoint.local.replicas = ", replicas_,
            " must be in [1, world_size = ", pg_->world_size(), ")");
  NNX_CHECK(retention != nullptr, "PeerReplicas needs a preservation policy for its replica folders");
  checkpoint::CheckpointManagerOptions mo;
  mo.preservation_policy = std::move(retention);
  mo.handle_preemption_signals = false;
  for (int s : sources()) {
    next_in_[s] = 0;
    try {  // without its folder this rank still receives (and discards) what the peer sends
      stdfs::create_directories(replica_dir(s));
      stores_[s] = std::make_unique<checkpoint::CheckpointManager>(replica_dir(s), mo);
    } catch (const std::exception& e) {
      log::warn_parts("checkpoint.local: cannot keep rank ", s, "'s replicas in '", replica_dir(s).string(), "' (",
                      e.what(), ")");
      stores_[s] = nullptr;
    }
  }
  // Named, so that top -H and perf tell them from the training's threads.
  sender_ = std::thread([this] {
    ::pthread_setname_np(::pthread_self(), "nnx-replica-tx");
    send_loop();
  });
  receiver_ = std::thread([this] {
    ::pthread_setname_np(::pthread_self(), "nnx-replica-rx");
    receive_loop();
  });
}

PeerReplicas::~PeerReplicas() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_send_ = true;
    pending_.reset();
  }
  cv_.notify_all();
  stop_recv_ = true;
  if (sender_.joinable()) sender_.join();
  if (receiver_.joinable()) receiver_.join();
}

std::vector<int> PeerReplicas::sources() const {
  std::vector<int> out;
  const int n = pg_->world_size();
  for (int k = 1; k <= replicas_; ++k) out.push_back(((pg_->rank() - k) % n + n) % n);
  return out;
}

stdfs::path PeerReplicas::replica_dir(int source) const {
  return host_dir_ / "replicas" / ("rank-" + std::to_string(source));
}

stdfs::path PeerReplicas::step_path(int source, int64_t step) const {
  std::lock_guard<std::mutex> l(mu_);
  auto it = stores_.find(source);
  return it != stores_.end() && it->second ? it->second->step_path(step) : replica_dir(source) / std::to_string(step);
}

std::vector<int64_t> PeerReplicas::steps_of(int source) const {
  std::lock_guard<std::mutex> l(mu_);
  auto it = stores_.find(source);
  if (it == stores_.end() || !it->second) return {};
  it->second->reload();
  return it->second->all_steps();
}

void delete_steps_newer_than(checkpoint::CheckpointManager& m, int64_t step) {
  m.reload();
  for (int64_t s : m.all_steps()) try {
      if (s > step) m.delete_step(s);
    } catch (const std::exception& e) {
      log::warn_parts("checkpoint.local: cannot delete the stale step ", s, " of '", m.directory().string(), "' (",
                      e.what(), ")");
    }
}

void PeerReplicas::discard_newer_than(int64_t step) {
  std::lock_guard<std::mutex> l(mu_);
  for (auto& [source, m] : stores_)
    if (m) delete_steps_newer_than(*m, step);
}

std::string PeerReplicas::key(int source, int dest, int64_t seq) const {
  return "nnx/local-replicas/" + std::to_string(source) + "-" + std::to_string(dest) + "/" + std::to_string(seq);
}

void PeerReplicas::offer(int64_t step, stdfs::path step_dir, std::function<bool()> committed) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (stop_send_) return;
    pending_ = Offer{step, std::move(step_dir), std::move(committed)};  // replaces an older one
  }
  cv_.notify_all();
}

void PeerReplicas::send_loop() {
  for (;;) {
    Offer o;
    {
      std::unique_lock<std::mutex> l(mu_);
      cv_.wait(l, [&] { return stop_send_ || pending_; });
      if (!pending_) return;
      o = std::move(*pending_);
      pending_.reset();
      in_flight_ = true;
    }
    send_one(o);
    std::lock_guard<std::mutex> l(mu_);
    in_flight_ = false;
  }
}

bool PeerReplicas::busy() const {
  std::lock_guard<std::mutex> l(mu_);
  return pending_.has_value() || in_flight_;
}

// Announces the step to each destination (a store key per transfer, holding the step for
// whoever inspects the store; the receiver reads the step from the header), then sends it.
void PeerReplicas::send_one(const Offer& o) {
  if (!o.committed()) return;  // the local save failed or was skipped: nothing to replicate
  const int n = pg_->world_size();
  bool all = true;  // every peer answered that it holds the step
  for (int k = 1; k <= replicas_; ++k) {
    const int dest = (pg_->rank() + k) % n;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (stop_send_) return;  // the peers may have stopped receiving: announce nothing new
    }
    try {
      pg_->store_set(key(pg_->rank(), dest, next_out_[dest]), std::to_string(o.step));
      ++next_out_[dest];  // only an announced transfer takes a sequence number
      bytes_sent_ += send_step(*pg_, o.dir, o.step, dest, tag_of(pg_->rank()));
      ++copies_sent_;
      warned_ = false;
    } catch (const std::exception& e) {
      all = false;
      if (!warned_) log::warn_parts("checkpoint.local: replicating step ", o.step, " to rank ", dest, " failed (",
                                    e.what(), "); the local and persistent tiers go on");
      warned_ = true;
    }
  }
  if (all) confirmed_ = o.step;
}

void PeerReplicas::stop_sending() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_send_ = true;
  }
  cv_.notify_all();  // the sender finishes its transfer; an offer it takes after this sends nothing
  if (sender_.joinable()) sender_.join();
}

void PeerReplicas::stop_receiving() {
  stop_recv_ = true;
  if (receiver_.joinable()) receiver_.join();
}

void PeerReplicas::receive_loop() {
  for (;;) {
    const bool stopping = stop_recv_.load();  // read first: a last pass after the stop
    bool any = false;
    for (int s : sources()) any = receive_announced(s) || any;
    if (stopping && !any) return;
    if (!any) std::this_thread::sleep_for(kPollInterval);
  }
}

// Receives `source`'s next transfer when it has been announced; keeps the newest max_to_keep.
bool PeerReplicas::receive_announced(int source) {
  const std::string k = key(source, pg_->rank(), next_in_[source]);
  try {
    if (!pg_->store_check(k)) return false;
  } catch (const std::exception&) {  // the store is gone (the run is ending): nothing to receive
    return false;
  }
  try {
    ++next_in_[source];
    pg_->store_delete(k);
    const auto got = recv_step(*pg_, source, tag_of(source), [&](int64_t step) { return step_path(source, step); });
    if (got.committed) ++copies_received_;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (auto& m = stores_.at(source)) {  // committed behind the manager's back: its retention
        m->reload();
        m->apply_retention();
      }
    }
  } catch (const std::exception& e) {
    log::warn_parts("checkpoint.local: receiving a replica from rank ", source, " failed (", e.what(), ")");
  }
  return true;
}

}  // namespace nnx::checkpoint::emergency
