#include "nnx/checkpoint/io/task_group.h"

#include <c10/core/thread_pool.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>

#include "nnx/framework/error.h"

namespace nnx::checkpoint::io {

namespace {
c10::ThreadPool& pool() {
  // Never destroyed: no order problem with static destructors at exit (threads blocked in a
  // wait are reclaimed by the OS).
  static c10::ThreadPool* p = new c10::ThreadPool(
      static_cast<int>(std::max(16u, 2 * std::thread::hardware_concurrency())));
  return *p;
}
}  // namespace

struct TaskGroup::Shared {
  struct Job {
    uint64_t index = 0;
    std::function<void()> run;
  };
  std::mutex mu;
  std::condition_variable idle;  // signalled when the last job of the group ends
  std::deque<Job> queue;
  int max_parallel = 1;
  int tokens = 0;       // pool tasks of this group that are queued or running
  int running = 0;      // jobs running (on pool threads or a waiter)
  uint64_t submitted = 0;
  bool closed = false;  // wait() returned: nothing more may be submitted
  std::exception_ptr error;
  uint64_t error_index = 0;

  // Takes the next job, or returns false when the queue is empty (under `lock`).
  bool take(std::unique_lock<std::mutex>& lock, Job& job) {
    if (queue.empty()) return false;
    job = std::move(queue.front());
    queue.pop_front();
    ++running;
    lock.unlock();
    return true;
  }
  // Runs `job`, keeps the earliest failure, and wakes waiters when the group is idle.
  void run(Job& job) {
    std::exception_ptr failed;
    try {
      job.run();
    } catch (...) {
      failed = std::current_exception();
    }
    job.run = nullptr;  // release what the job captured before the group can be seen idle
    std::lock_guard<std::mutex> lock(mu);
    if (failed && (!error || job.index < error_index)) {
      error = failed;
      error_index = job.index;
    }
    if (--running == 0 && queue.empty()) idle.notify_all();
  }
  // A pool thread's token: runs the group's jobs until the queue is empty.
  static void work(const std::shared_ptr<Shared>& self) {
    while (true) {
      std::unique_lock<std::mutex> lock(self->mu);
      Job job;
      if (!self->take(lock, job)) {
        --self->tokens;
        return;
      }
      self->run(job);
    }
  }
};

TaskGroup::TaskGroup(int max_parallel) : shared_(std::make_shared<Shared>()) {
  shared_->max_parallel = std::max(1, max_parallel);
}

TaskGroup::~TaskGroup() {
  try {
    wait();
  } catch (...) {  // reported by wait() to a caller that asked; an unwinding owner did not
  }
}

void TaskGroup::submit(std::function<void()> job) {
  bool post = false;
  {
    std::lock_guard<std::mutex> lock(shared_->mu);
    NNX_INTERNAL_ASSERT(!shared_->closed, "a job submitted after wait()");
    shared_->queue.push_back({shared_->submitted++, std::move(job)});
    if (shared_->tokens < shared_->max_parallel) {
      ++shared_->tokens;
      post = true;
    }
  }
  if (!post) return;
  try {
    pool().run([s = shared_] { Shared::work(s); });
  } catch (...) {  // the pool could not take it: wait() runs the job on its caller
    std::lock_guard<std::mutex> lock(shared_->mu);
    --shared_->tokens;
  }
}

void TaskGroup::wait() {
  Shared& s = *shared_;
  // Help: run the jobs no pool thread has started yet.
  while (true) {
    std::unique_lock<std::mutex> lock(s.mu);
    Shared::Job job;
    if (!s.take(lock, job)) break;
    s.run(job);
  }
  std::unique_lock<std::mutex> lock(s.mu);
  s.idle.wait(lock, [&] { return s.running == 0 && s.queue.empty(); });
  s.closed = true;
  if (s.error) {
    std::exception_ptr e = s.error;
    s.error = nullptr;
    std::rethrow_exception(e);
  }
}

bool TaskGroup::busy() const {
  std::lock_guard<std::mutex> lock(shared_->mu);
  return shared_->running > 0 || !shared_->queue.empty();
}

int pool_size() { return static_cast<int>(pool().size()); }

}  // namespace nnx::checkpoint::io
