#include "nnx/checkpoint/async_checkpointer.h"

#include <chrono>

#include "nnx/checkpoint/handlers/registry.h"
#include "nnx/checkpoint/io/host_snapshot.h"
#include "nnx/framework/error.h"

namespace nnx::checkpoint {

namespace stdfs = std::filesystem;

Composite snapshot_items(const Composite& args, io::HostSnapshot& snapshot) {
  Composite out;
  for (const auto& [name, a] : args.items())
    out.add(name, HandlerRegistry::global().for_save(name, a).snapshot(a, name, snapshot));
  return out;
}

Composite snapshot_to_host(const Composite& args, std::vector<at::Tensor>* reuse) {
  io::HostSnapshot snapshot(reuse);
  Composite out = snapshot_items(args, snapshot);
  snapshot.finish();
  return out;
}

AsyncCheckpointer::~AsyncCheckpointer() {
  // The jobs report through their promises; they never throw here.
  if (latest_.worker) latest_.worker->wait();
  if (older_.worker) older_.worker->wait();
}

AsyncCheckpointer::Flight AsyncCheckpointer::current() const {
  std::lock_guard<std::mutex> lock(mu_);
  return flight_;
}

bool AsyncCheckpointer::in_progress() const {
  Flight f = current();
  return f.done.valid() && f.done.wait_for(std::chrono::seconds(0)) != std::future_status::ready;
}

void AsyncCheckpointer::wait() const {
  Flight f = current();
  if (f.done.valid()) f.done.wait();
}

void AsyncCheckpointer::wait_until_finished() { wait_for_flight(/*clear_failure=*/false); }

// Waiters share the save's future: each of them sees its failure. A success is forgotten by the
// first to return; a failure only by the owner's wait or a save (`clear_failure`), so no other
// waiter consumes the error that the training loop's next call must raise.
void AsyncCheckpointer::wait_for_flight(bool clear_failure) {
  Flight f = current();
  if (!f.done.valid()) return;
  f.done.wait();
  bool failed = false;
  try {
    f.done.get();
  } catch (...) {
    failed = true;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (flight_.id == f.id && (!failed || clear_failure || std::this_thread::get_id() == f.owner)) flight_.done = {};
  }
  f.done.get();  // rethrows the failure, if any
}

void AsyncCheckpointer::save(const stdfs::path& path, const Composite& args, const nlohmann::json& metadata) {
  save_async(path, args, metadata, nullptr);
}

// Makes room for one more save: max_in_flight 1 waits for the save in flight (and reports its
// failure); 2 waits for the one before it, whose job's end the newest job waits for anyway.
void AsyncCheckpointer::retire_older() {
  NNX_CHECK(max_in_flight == 1 || max_in_flight == 2, "AsyncCheckpointer::max_in_flight must be 1 or 2, got ",
            max_in_flight);
  if (older_.worker) older_.worker->wait();  // finished: its promise is set
  older_ = {};
  const Flight f = current();
  const bool done = !f.done.valid() || f.done.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
  if (max_in_flight == 1 || done) {
    wait_for_flight(/*clear_failure=*/true);  // a failure is reported (and cleared) before anything else is saved
    if (latest_.worker) latest_.worker->wait();
    latest_ = {};
  }
}

void AsyncCheckpointer::save_async(const stdfs::path& path, const Composite& args, const nlohmann::json& metadata,
                                   std::function<void()> on_commit,
                                   std::function<void(std::exception_ptr)> on_failure) {
  retire_older();
  NNX_CHECK(!stdfs::exists(path), "checkpoint '", path.string(), "' already exists; it is never overwritten");
  // With a save still in flight, this snapshot takes the other set of host buffers.
  if (latest_.worker) buffer_set_ = 1 - buffer_set_;
  // Deferred: the copies run on the pool while the caller goes on; the job waits for them (and
  // fails on a torn copy) before it writes. In save: they are made here.
  auto copies = std::make_shared<io::HostSnapshot>(&buffers_[buffer_set_], snapshot_timing);
  Composite snap = snapshot_items(args, *copies);
  if (snapshot_timing == io::SnapshotTiming::kInSave) copies->finish();
  else copies->start();
  // The promise stays with this object, not with the job: the future's state (and a failure's
  // exception) is released here, after the job was waited for, never on a pool thread while a
  // waiter may still be reading the exception.
  const std::shared_future<void> previous = latest_.worker ? current().done : std::shared_future<void>();
  older_ = std::move(latest_);
  latest_.promise = std::make_unique<std::promise<void>>();
  {
    std::lock_guard<std::mutex> lock(mu_);
    flight_ = Flight{latest_.promise->get_future().share(), ++next_id_, std::this_thread::get_id()};
  }
  latest_.worker = std::make_unique<io::TaskGroup>(1);
  latest_.worker->submit([this, path, snap = std::move(snap), copies = std::move(copies), metadata, previous,
                          on_commit = std::move(on_commit), on_failure = std::move(on_failure),
                          promise = latest_.promise.get()]() mutable {
    std::exception_ptr before;  // the previous save's failure, reported by this one
    if (previous.valid()) {
      previous.wait();  // steps commit in order
      try {
        previous.get();
      } catch (...) {
        before = std::current_exception();
      }
    }
    try {
      copies->wait();
      Checkpointer::save(path, snap, metadata);
      if (on_commit) on_commit();
      if (before) promise->set_exception(before);
      else promise->set_value();
    } catch (...) {
      auto e = std::current_exception();
      try {
        if (on_failure) on_failure(e);
      } catch (...) {  // the waiters must still learn of the failure
      }
      promise->set_exception(before ? before : e);
    }
  });
}

}  // namespace nnx::checkpoint
