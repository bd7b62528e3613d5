// The asynchronous checkpointer (ocp.AsyncCheckpointer): snapshot now, write in the background.
#pragma once

#include <exception>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "nnx/checkpoint/checkpointer.h"
#include "nnx/checkpoint/io/host_snapshot.h"
#include "nnx/checkpoint/io/task_group.h"

namespace nnx::checkpoint {

/// Asynchronous checkpointer (ocp.AsyncCheckpointer): save() snapshots every tensor to host
/// memory, then writes and commits as a job on the checkpoint subsystem's pool (io::TaskGroup).
/// With snapshot_timing kInSave (the default) save() returns after the copy, and the caller may
/// change its tensors any way it likes; with kDeferred it returns once it has recorded what to
/// copy, the copy runs beside the caller's next steps, and in-place writers of saved tensors
/// pass the write fence (io::HostSnapshot, framework/write_fence.h). The snapshot's host
/// buffers are reused by the next save: one snapshot of extra memory. With max_in_flight 1 (the
/// default) one save is in flight at a time: save() first waits for the previous one. With 2,
/// save() waits only for the save before the one in flight: the new snapshot goes into a second
/// set of host buffers (two snapshots of extra memory) and its write starts once the previous
/// save finished, so steps commit in order. A failed background save is rethrown by the next
/// save() or wait_until_finished(), Orbax's rule: every wait_until_finished() that waits for it
/// raises it, on any thread, and none of them clears it, except one on the thread that called
/// save() (the owner); the owner's next wait or any next save() raises it and clears it, so a
/// monitoring thread that waits first never swallows the loop's error (with two in flight, the
/// newer save reports the older's failure). save() is called from one thread at a time; wait_until_finished(), wait()
/// and in_progress() from any.
class AsyncCheckpointer : public Checkpointer {
 public:
  AsyncCheckpointer() = default;
  /// Waits for the save in flight; errors are swallowed here (call wait_until_finished first).
  ~AsyncCheckpointer() override;
  void save(const std::filesystem::path& path, const Composite& args,
            const nlohmann::json& metadata = nlohmann::json::object()) override;
  /// Like save(); `on_commit` runs on the background job after the commit succeeded, and
  /// `on_failure` (with the error) when the save failed; waiters return after either.
  void save_async(const std::filesystem::path& path, const Composite& args, const nlohmann::json& metadata,
                  std::function<void()> on_commit, std::function<void(std::exception_ptr)> on_failure = nullptr);
  /// Blocks until no save is in flight; rethrows a background failure (see the class comment).
  void wait_until_finished();
  /// The same from a saving path (a manager's save or close), on whichever thread: rethrows a
  /// failure and clears it, as the owner's wait does.
  void finish_previous_save() { wait_for_flight(/*clear_failure=*/true); }
  /// Blocks until no save is in flight; never throws, reports nothing (a failure stays for
  /// wait_until_finished()).
  void wait() const;
  bool in_progress() const;

  /// When the snapshot copies (see the class comment).
  io::SnapshotTiming snapshot_timing = io::SnapshotTiming::kInSave;
  /// Saves in flight at most: 1, or 2 (a second set of host buffers; see the class comment).
  int max_in_flight = 1;

 private:
  struct Flight {
    std::shared_future<void> done;  // ready when the save committed or failed
    uint64_t id = 0;
    std::thread::id owner;  // the thread that called save(): its wait clears a failure
  };
  void wait_for_flight(bool clear_failure);
  Flight current() const;
  struct Job {
    std::unique_ptr<std::promise<void>> promise;
    std::unique_ptr<io::TaskGroup> worker;  // waited by save_async and the destructor
  };
  void retire_older();
  Job latest_;  // the newest save's; replaced only by save_async
  Job older_;   // max_in_flight 2: the save before it, which the newest one's job waits for
  Flight flight_;  // the newest save's; done invalid: nothing in flight and no failure left to report
  uint64_t next_id_ = 0;
  std::vector<at::Tensor> buffers_[2];  // host buffers of the last snapshot made in each set, reused
  int buffer_set_ = 0;                  // the set the last snapshot used
  mutable std::mutex mu_;
};

/// Copies the tensors of every item to host memory (an async snapshot) with its handler's
/// snapshot(): contiguous CPU tensors in 4 MiB pieces on up to 4 pool jobs. Buffers from
/// `reuse` (a previous snapshot's, in order) are reused where dtype and size match, which saves
/// the page faults of fresh allocations. Throws nnx::Error for an abstract or undefined tensor.
Composite snapshot_to_host(const Composite& args, std::vector<at::Tensor>* reuse = nullptr);

/// The items of `args` with their tensors replaced by `snapshot`'s host copies (each handler's
/// snapshot()); the copies are made when `snapshot` finishes. Throws as snapshot_to_host.
Composite snapshot_items(const Composite& args, io::HostSnapshot& snapshot);

}  // namespace nnx::checkpoint
