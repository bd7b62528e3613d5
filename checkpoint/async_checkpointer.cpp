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
  if (worker_) worker_->wait();  // the job reports through its promise; it never throws here
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

void AsyncCheckpointer::wait_until_finished() {
  // Waiters share the save's future: each of them sees its failure. The first to return
  // forgets the save, so a later wait does not report the same failure again.
  Flight f = current();
  if (!f.done.valid()) return;
  f.done.wait();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (flight_.id == f.id) flight_.done = {};
  }
  f.done.get();
}

void AsyncCheckpointer::save(const stdfs::path& path, const Composite& args, const nlohmann::json& metadata) {
  save_async(path, args, metadata, nullptr);
}

void AsyncCheckpointer::save_async(const stdfs::path& path, const Composite& args, const nlohmann::json& metadata,
                                   std::function<void()> on_commit,
                                   std::function<void(std::exception_ptr)> on_failure) {
  wait_until_finished();
  if (worker_) worker_->wait();  // finished: its promise is set
  NNX_CHECK(!stdfs::exists(path), "checkpoint '", path.string(), "' already exists; it is never overwritten");
  // Deferred: the copies run on the pool while the caller goes on; the job waits for them (and
  // fails on a torn copy) before it writes. In save: they are made here.
  auto copies = std::make_shared<io::HostSnapshot>(&buffers_, snapshot_timing);
  Composite snap = snapshot_items(args, *copies);
  if (snapshot_timing == io::SnapshotTiming::kInSave) copies->finish();
  else copies->start();
  // The promise stays with this object, not with the job: the future's state (and a failure's
  // exception) is released here, after the job was waited for, never on a pool thread while a
  // waiter may still be reading the exception.
  promise_ = std::make_unique<std::promise<void>>();
  {
    std::lock_guard<std::mutex> lock(mu_);
    flight_ = Flight{promise_->get_future().share(), ++next_id_};
  }
  worker_ = std::make_unique<io::TaskGroup>(1);
  worker_->submit([this, path, snap = std::move(snap), copies = std::move(copies), metadata,
                   on_commit = std::move(on_commit), on_failure = std::move(on_failure),
                   promise = promise_.get()]() mutable {
    try {
      copies->wait();
      Checkpointer::save(path, snap, metadata);
      if (on_commit) on_commit();
      promise->set_value();
    } catch (...) {
      auto e = std::current_exception();
      try {
        if (on_failure) on_failure(e);
      } catch (...) {  // the waiters must still learn of the failure
      }
      promise->set_exception(e);
    }
  });
}

}  // namespace nnx::checkpoint
