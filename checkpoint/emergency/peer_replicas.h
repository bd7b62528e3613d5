// checkpoint.local.replicas: copies of each rank's local-tier steps on its peer ranks.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "nnx/checkpoint/preservation_policy.h"

namespace nnx::distributed {
class ProcessGroup;
}
namespace nnx::checkpoint {
class CheckpointManager;
}

namespace nnx::checkpoint::emergency {

/// Deletes the committed steps of `m` newer than `step` (rereading its directory first);
/// failures are warnings naming the step and directory.
void delete_steps_newer_than(checkpoint::CheckpointManager& m, int64_t step);

/// Replicates this rank's local-tier steps to ranks (rank + k) mod world_size, k = 1..replicas,
/// and keeps the copies that ranks (rank - k) mod world_size send here, under
/// <host_dir>/replicas/rank-<source>/ (committed atomically; each source's folder keeps the
/// steps `retention` keeps). Two background threads on a process group of their
/// own: one sends the newest step offered (an older one still waiting is dropped), one receives.
/// Each transfer is announced by a store key, so an idle receiver polls the store and never
/// waits on the network; a transfer ends when the peer answers that it committed the step.
/// Transfer failures are warnings: the local tier and the persistent tier go on.
/// Memory: one kTransferChunkBytes buffer per thread while a transfer runs.
class PeerReplicas {
 public:
  /// Starts both threads. `group` serves replication alone (its collectives must not interleave
  /// with the training's); `replicas` is in [1, world_size) (else nnx::Error). A replica folder
  /// that cannot be made is a warning: what that source sends is received and discarded.
  /// `retention` (not null, else nnx::Error): the preservation policy of every source's folder,
  /// applied after each received commit (the local tier passes its own folder's policy).
  PeerReplicas(std::shared_ptr<distributed::ProcessGroup> group, std::filesystem::path host_dir, int replicas,
               checkpoint::PreservationPolicyPtr retention);
  /// Stops both threads without waiting for peers (transfers in flight end or fail).
  ~PeerReplicas();
  /// Queues the step `step` at `step_dir` for the peers; `committed` runs on the sending thread
  /// and says whether the step committed (waiting for an async save as needed).
  void offer(int64_t step, std::filesystem::path step_dir, std::function<bool()> committed);
  /// Whether an offer is waiting or being sent (the caller offers a step only when no rank's
  /// sender is busy, so every rank replicates the same steps).
  bool busy() const;
  /// The newest offered step that every peer answered it holds (-1: none yet).
  int64_t confirmed_step() const { return confirmed_.load(); }
  /// Finishes the transfer in flight and stops sending. Every rank calls it, then a barrier,
  /// then stop_receiving(): so every announced transfer is received.
  void stop_sending();
  /// Receives every transfer announced so far, then stops receiving.
  void stop_receiving();
  /// The ranks whose replicas this rank holds: (rank - k) mod world_size, k = 1..replicas.
  std::vector<int> sources() const;
  /// The folder of `source`'s replicas on this rank.
  std::filesystem::path replica_dir(int source) const;
  /// Where `source`'s replica of `step` is (or would be) committed here.
  std::filesystem::path step_path(int source, int64_t step) const;
  /// Deletes every replica here newer than `step` (warnings on failure).
  void discard_newer_than(int64_t step);
  /// The steps of `source` committed here, ascending.
  std::vector<int64_t> steps_of(int source) const;
  /// Bytes this rank sent (all peers) and how many step copies, since construction.
  int64_t bytes_sent() const { return bytes_sent_.load(); }
  int64_t copies_sent() const { return copies_sent_.load(); }
  /// Step copies received and committed here.
  int64_t copies_received() const { return copies_received_.load(); }

 private:
  struct Offer {
    int64_t step;
    std::filesystem::path dir;
    std::function<bool()> committed;
  };
  void send_loop();
  void send_one(const Offer& o);
  void receive_loop();
  bool receive_announced(int source);
  std::string key(int source, int dest, int64_t seq) const;

  std::shared_ptr<distributed::ProcessGroup> pg_;
  std::filesystem::path host_dir_;
  int replicas_;
  std::map<int, std::unique_ptr<checkpoint::CheckpointManager>> stores_;  // by source
  std::map<int, int64_t> next_in_;                                         // by source
  std::map<int, int64_t> next_out_;                                        // by destination
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::optional<Offer> pending_;
  bool in_flight_ = false;  // the sender took an offer and has not finished it
  std::atomic<int64_t> confirmed_{-1};
  bool stop_send_ = false;
  std::atomic<bool> stop_recv_{false};
  bool warned_ = false;
  std::atomic<int64_t> bytes_sent_{0}, copies_sent_{0}, copies_received_{0};
  std::thread sender_, receiver_;
};

}  // namespace nnx::checkpoint::emergency
