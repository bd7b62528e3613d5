#include "nnx/checkpoint/io/host_snapshot.h"

#include <ATen/ATen.h>
#include <sys/mman.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>

#include "nnx/checkpoint/io/device_copies.h"
#include "nnx/checkpoint/io/task_group.h"
#include "nnx/framework/compat.h"
#include "nnx/framework/error.h"
#include "nnx/framework/write_fence.h"

namespace nnx::checkpoint::io {

namespace {

constexpr size_t kPiece = size_t(4) << 20;

// Copies `n` bytes with non-temporal (streaming) stores when `dst` is 16-byte aligned on x86-64:
// a snapshot is not read again until the background write, so its lines need not go through
// the cache, which saves the read-for-ownership of every destination line. The copy is
// memory-bound: 400 MB in 4 MiB pieces on 2 threads took 17-19 ms this way and 26-29 ms with
// memcpy on the test machine. Elsewhere it is memcpy.
void copy_streaming(char* dst, const char* src, size_t n) {
#if defined(__SSE2__)
  if (reinterpret_cast<uintptr_t>(dst) % 16 == 0) {
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
      const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 16));
      const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 32));
      const __m128i d = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 48));
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), a);
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 16), b);
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 32), c);
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 48), d);
    }
    _mm_sfence();  // streaming stores are weakly ordered: make them visible before the join
    std::memcpy(dst + i, src + i, n - i);
    return;
  }
#endif
  std::memcpy(dst, src, n);
}

}  // namespace

// The fence of a snapshot's device tensors: a writer's current stream waits for the copies.
struct DeviceFence : PendingRead {
  explicit DeviceFence(std::shared_ptr<DeviceCopies> c) : copies(std::move(c)) {}
  void complete() override {
    std::lock_guard<std::mutex> lock(mu);
    for (const c10::Device& d : devices) copies->order_before(compat::current_stream(d));
  }
  void add(const c10::Device& d) {
    std::lock_guard<std::mutex> lock(mu);
    if (std::find(devices.begin(), devices.end(), d) == devices.end()) devices.push_back(d);
  }
  std::shared_ptr<DeviceCopies> copies;
  std::mutex mu;
  std::vector<c10::Device> devices;
};

// Its own mapping, not malloc's heap, so the huge-page advice stays on this buffer and is
// unmapped with it; only whole 2 MiB blocks inside the mapping become huge pages (fewer page
// faults and TLB misses for the copy), so the last one is not padded.
at::Tensor host_buffer(at::IntArrayRef sizes, at::ScalarType dtype) {
  int64_t numel = 1;
  for (int64_t d : sizes) numel *= d;
  const size_t nbytes = static_cast<size_t>(numel) * at::elementSize(dtype);
  if (nbytes < (size_t(1) << 20)) return at::empty(sizes, at::TensorOptions().dtype(dtype));
  const size_t len = (nbytes + 4095) / 4096 * 4096;
  void* p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  ::madvise(p, len, MADV_HUGEPAGE);
  return at::from_blob(p, sizes, [len](void* q) { ::munmap(q, len); }, at::TensorOptions().dtype(dtype));
}

// One deferred tensor copy, and the fence its source's writers pass: whoever comes first (a
// pool job, or a writer at the fence) claims it and copies; the others wait for that copy.
struct DeferredCopy : PendingRead {
  DeferredCopy(at::Tensor s, at::Tensor d, std::string w)
      : src(std::move(s)), dst(std::move(d)), where(std::move(w)), version(src.is_inference() ? -1 : int64_t(src._version())) {}
  void complete() override {
    if (claim()) run();
    std::unique_lock<std::mutex> lock(mu);
    done_cv.wait(lock, [this] { return state == kDone; });
  }
  // True for the one caller that may copy.
  bool claim() {
    std::lock_guard<std::mutex> lock(mu);
    if (state != kPending) return false;
    state = kRunning;
    return true;
  }
  void run() {
    copy_streaming(static_cast<char*>(dst.data_ptr()), static_cast<const char*>(src.data_ptr()), src.nbytes());
    // An in-place write bumps the version counter after it finished: a write that skipped the
    // fence and ended before this copy shows here (one still running may not).
    const bool changed = version >= 0 && int64_t(src._version()) != version;
    {
      std::lock_guard<std::mutex> lock(mu);
      torn = changed;
      state = kDone;
    }
    done_cv.notify_all();
    remove_pending_read(src, this);
  }
  // Drops the fence without copying (a snapshot abandoned before start()).
  void withdraw() {
    if (claim()) {
      std::lock_guard<std::mutex> lock(mu);
      state = kDone;
    }
    done_cv.notify_all();
    remove_pending_read(src, this);
  }

  enum State { kPending, kRunning, kDone };
  const at::Tensor src;
  const at::Tensor dst;
  const std::string where;
  const int64_t version;  // src's version counter at save(); -1: untracked (an inference tensor)
  std::mutex mu;
  std::condition_variable done_cv;
  State state = kPending;
  bool torn = false;
};

HostSnapshot::HostSnapshot(std::vector<at::Tensor>* reuse, SnapshotTiming timing) : reuse_(reuse), timing_(timing) {}

HostSnapshot::~HostSnapshot() {
  try {
    if (jobs_) jobs_->wait();
  } catch (...) {  // the copies only memcpy; nothing to report from a destructor
  }
  withdraw();
}

void HostSnapshot::withdraw() {
  for (auto& d : deferred_) d->withdraw();
  finish_device_copies();  // queued in copy(): they must land before their buffers can be freed
}

void HostSnapshot::finish_device_copies() {
  if (device_copies_) device_copies_->synchronize();
  for (auto& t : device_sources_) remove_pending_read(t, device_fence_.get());
  device_sources_.clear();
}

at::Tensor HostSnapshot::buffer_for(const at::Tensor& src) {
  at::Tensor buf;
  if (reuse_ && next_ < reuse_->size()) {
    at::Tensor& cand = (*reuse_)[next_];
    if (cand.scalar_type() == src.scalar_type() && cand.numel() == src.numel() && cand.use_count() == 1)
      buf = cand.view(src.sizes());
  }
  ++next_;
  if (buf.defined() && !src.is_cpu() && !buf.is_pinned()) buf = at::Tensor();
  if (!buf.defined())
    buf = src.is_cpu() ? host_buffer(src.sizes(), src.scalar_type()) : DeviceCopies::pinned(src.sizes(), src.scalar_type());
  used_.push_back(buf);
  return buf;
}

at::Tensor HostSnapshot::copy(const at::Tensor& value, const std::string& where) {
  NNX_CHECK(value.defined() && !value.is_meta(), "cannot save '", where, "': the tensor is abstract or undefined");
  NNX_INTERNAL_ASSERT(!jobs_ && !waited_, "HostSnapshot::copy after start()");
  const at::Tensor src = value.detach();  // shares the storage and the version counter
  at::Tensor buf = buffer_for(src);
  const bool contiguous_cpu = src.is_cpu() && src.is_contiguous();
  const size_t n = static_cast<size_t>(src.numel()) * src.element_size();
  if (timing_ == SnapshotTiming::kDeferred && contiguous_cpu && n >= kDeferredMinBytes) {
    deferred_.push_back(std::make_shared<DeferredCopy>(src, buf, where));
    add_pending_read(src, deferred_.back());
  } else if (contiguous_cpu && timing_ == SnapshotTiming::kInSave) {
    for (size_t off = 0; off < n; off += kPiece)
      pieces_.push_back({static_cast<char*>(buf.data_ptr()) + off, static_cast<const char*>(src.data_ptr()) + off,
                         std::min(kPiece, n - off)});
  } else if (!src.is_cpu()) {
    return copy_from_device(src, buf);
  } else {
    buf.copy_(src);  // small, or a view
  }
  return buf;
}

at::Tensor HostSnapshot::copy_from_device(const at::Tensor& src, const at::Tensor& buf) {
  if (!device_copies_) {
    device_copies_ = std::make_shared<DeviceCopies>();
    if (timing_ == SnapshotTiming::kDeferred) device_fence_ = std::make_shared<DeviceFence>(device_copies_);
  }
  device_copies_->enqueue(src, buf);
  if (device_fence_) {
    device_fence_->add(src.device());
    add_pending_read(src, device_fence_);
    device_sources_.push_back(src);
  }
  return buf;
}

void HostSnapshot::copy_pieces() {
  // The caller waits for this copy, so it may use the machine's cores (at most 4: the copy is
  // bound by memory bandwidth). ATen's parallel_for is an OpenMP pragma in a header, inert in
  // code built without -fopenmp, so the pieces go to the pool.
  const size_t jobs = std::min<size_t>({std::max(1u, std::thread::hardware_concurrency()), pieces_.size(), 4});
  // One pool job fewer than shares: wait() runs the share no pool job took on this thread.
  TaskGroup copies(static_cast<int>(jobs > 1 ? jobs - 1 : 1));
  for (size_t first = 0; first < jobs; ++first)
    copies.submit([this, first, jobs] {
      for (size_t i = first; i < pieces_.size(); i += jobs) copy_streaming(pieces_[i].dst, pieces_[i].src, pieces_[i].n);
    });
  copies.wait();
  pieces_.clear();
}

void HostSnapshot::start() {
  NNX_INTERNAL_ASSERT(!jobs_ && !waited_, "HostSnapshot::start twice");
  copy_pieces();
  if (device_copies_ && timing_ == SnapshotTiming::kInSave) device_copies_->synchronize();
  // Two jobs at most: the copy runs beside training, which needs the cores and the memory
  // bandwidth more; a writer at the fence copies its own tensor without waiting for the queue.
  jobs_ = std::make_unique<TaskGroup>(2);
  next_task_ = std::make_shared<std::atomic<size_t>>(0);
  for (size_t j = 0; j < std::min<size_t>(2, deferred_.size()); ++j)
    jobs_->submit([tasks = deferred_, next = next_task_] {
      for (size_t i = next->fetch_add(1); i < tasks.size(); i = next->fetch_add(1))
        if (tasks[i]->claim()) tasks[i]->run();
    });
}

void HostSnapshot::keep_buffers() {
  if (reuse_) *reuse_ = std::move(used_);
  used_.clear();
}

void HostSnapshot::wait() {
  if (waited_) return;
  if (!jobs_) start();
  waited_ = true;
  jobs_->wait();
  std::string torn;
  for (auto& d : deferred_) {
    d->complete();  // a writer may still be copying it
    deferred_bytes_ += d->src.nbytes();
    if (d->torn) torn += (torn.empty() ? "'" : ", '") + d->where + "'";
  }
  deferred_.clear();
  finish_device_copies();
  keep_buffers();
  NNX_CHECK(torn.empty(), "the deferred snapshot of ", torn,
            " is torn: written in place after save() returned and before it was copied, past the write fence. "
            "Write state through Variable::mutable_value() or call nnx::prepare_write() first, or snapshot in "
            "save() (SnapshotTiming::kInSave, checkpoint.snapshot: in_save)");
}

void HostSnapshot::finish() {
  start();
  wait();
}

}  // namespace nnx::checkpoint::io
