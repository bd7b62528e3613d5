// The checkpoint subsystem's one thread pool, and groups of jobs that run on it.
#pragma once

#include <functional>
#include <memory>

namespace nnx::checkpoint::io {

/// Jobs submitted together (the writes of one file, the reads of one restore, the pieces of a
/// snapshot copy, a background save), run on the subsystem's one pool: a c10::ThreadPool of
/// max(16, 2 x cores) threads, created on first use and shared by every group (threads that
/// wait on a disk cost no core). At most `max_parallel` of a group's jobs run on the pool at
/// once, in submission order. wait() runs the group's jobs that have not started on the calling
/// thread too, so a group always finishes, even with every pool thread busy (or none, after a
/// fork). Thread-safe: jobs may submit to their own group.
class TaskGroup {
 public:
  /// `max_parallel` >= 1: the most jobs of this group on pool threads at once.
  explicit TaskGroup(int max_parallel);
  /// Waits for every job (none outlives the data it uses); a failure is dropped here.
  ~TaskGroup();
  /// Queues `job`. Throws nnx::Error after wait() returned.
  void submit(std::function<void()> job);
  /// Waits for every submitted job and rethrows the error of the earliest submitted job that
  /// failed (the same one on every run, with its type kept). Later calls return at once.
  void wait();
  /// True while a job is queued or running.
  bool busy() const;

 private:
  TaskGroup(const TaskGroup&) = delete;
  TaskGroup& operator=(const TaskGroup&) = delete;
  struct Shared;
  std::shared_ptr<Shared> shared_;  // also held by the pool's tokens, which may outlive this
};

/// Threads in the subsystem's pool (for tests and the benchmark's report).
int pool_size();

}  // namespace nnx::checkpoint::io
