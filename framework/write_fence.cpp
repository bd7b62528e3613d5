#include "nnx/framework/write_fence.h"

#include <atomic>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace nnx {

namespace {

// One registry for the process: the keys are storages, which any module, State or optimizer
// may share, so a per-Variable list would miss aliases (views, detached copies, tied weights).
struct Registry {
  std::mutex mu;
  std::unordered_multimap<const void*, std::shared_ptr<PendingRead>> reads;
  std::atomic<size_t> count{0};
};

Registry& registry() {
  static auto* r = new Registry;  // never destroyed: readers may finish during static destruction
  return *r;
}

const void* storage_key(const at::Tensor& t) {
  if (!t.defined() || !t.has_storage()) return nullptr;
  return t.storage().unsafeGetStorageImpl();
}

}  // namespace

void add_pending_read(const at::Tensor& t, std::shared_ptr<PendingRead> read) {
  const void* key = storage_key(t);
  if (!key || !read) return;
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  r.reads.emplace(key, std::move(read));
  r.count.fetch_add(1, std::memory_order_release);
}

void remove_pending_read(const at::Tensor& t, const PendingRead* read) {
  const void* key = storage_key(t);
  if (!key) return;
  Registry& r = registry();
  std::shared_ptr<PendingRead> last;  // released after the lock: its destructor may be anything
  std::lock_guard<std::mutex> lock(r.mu);
  auto [b, e] = r.reads.equal_range(key);
  for (auto it = b; it != e; ++it)
    if (it->second.get() == read) {
      last = std::move(it->second);
      r.reads.erase(it);
      r.count.fetch_sub(1, std::memory_order_release);
      return;
    }
}

void prepare_write(const at::Tensor& t) {
  Registry& r = registry();
  if (r.count.load(std::memory_order_acquire) == 0) return;
  const void* key = storage_key(t);
  if (!key) return;
  std::vector<std::shared_ptr<PendingRead>> due;
  {
    std::lock_guard<std::mutex> lock(r.mu);
    auto [b, e] = r.reads.equal_range(key);
    for (auto it = b; it != e; ++it) due.push_back(it->second);
  }
  for (auto& read : due) read->complete();  // outside the lock: a read removes itself when done
}

void prepare_write(c10::ArrayRef<at::Tensor> ts) {
  if (registry().count.load(std::memory_order_acquire) == 0) return;
  for (const auto& t : ts) prepare_write(t);
}

size_t pending_read_count() { return registry().count.load(std::memory_order_acquire); }

}  // namespace nnx
