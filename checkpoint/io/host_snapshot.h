// Host copies of tensors for an asynchronous save (the snapshot), made on the pool.
#pragma once

#include <ATen/core/Tensor.h>

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "nnx/checkpoint/io/snapshot_timing.h"

namespace nnx {
class PendingRead;
}

namespace nnx::checkpoint::io {

class TaskGroup;
struct DeferredCopy;
struct DeviceFence;
class DeviceCopies;


/// Copies tensors into host buffers that a background save can write while the caller goes on
/// changing the originals. copy() returns the buffer at once.
///
/// kInSave: the bytes of contiguous CPU tensors are copied by finish(), in 4 MiB pieces on up
/// to 4 pool jobs (the copy is bound by memory bandwidth) with streaming stores; anything else
/// (views, device tensors) is copied by ATen inside copy().
///
/// kDeferred: contiguous CPU tensors of kDeferredMinBytes or more are copied after start(),
/// one tensor per task on up to 2 pool jobs, while the caller goes on. Each pending copy is a
/// PendingRead on its tensor's storage (framework/write_fence.h): a writer that reaches the
/// fence first makes that one copy itself, on its own thread, and then writes. Smaller tensors
/// (RNG counters, BatchNorm statistics, the step) and the rest are copied inside copy(). A copy
/// whose source changed before it was read (a write that skipped the fence: the tensor's
/// version counter moved) makes wait() throw instead of saving torn state.
///
/// Device tensors (CUDA) go to pinned host buffers on a side stream (DeviceCopies), ordered
/// after the caller's queued work. kInSave: start() waits for them. kDeferred: start() returns
/// at once; the fence of a device tensor makes the writer's current stream wait for the copy's
/// event (the host does not block), and wait() blocks until the copies landed. A write that
/// skips the fence on a device is not detected (no version check across streams).
///
/// Buffers of a previous snapshot (`reuse`, in copy() order) are reused where dtype and size
/// match, which saves the page faults of fresh allocations; the end of the copies leaves this
/// snapshot's buffers there for the next one. Not thread-safe (one saving thread).
class HostSnapshot {
 public:
  /// Contiguous CPU tensors this large or larger are copied deferred (kDeferred).
  static constexpr size_t kDeferredMinBytes = size_t(64) << 10;

  /// `reuse` may be null (fresh buffers every time); it must outlive the snapshot.
  explicit HostSnapshot(std::vector<at::Tensor>* reuse, SnapshotTiming timing = SnapshotTiming::kInSave);
  /// Waits for copies still running; a snapshot never started withdraws its fences.
  ~HostSnapshot();
  /// A host tensor that holds `src`'s values (as of this call) once the copies ended. Throws
  /// nnx::Error for an undefined or abstract (meta) tensor, naming `where`.
  at::Tensor copy(const at::Tensor& src, const std::string& where);
  /// start() then wait(): every copy is made when it returns.
  void finish();
  /// Starts the copies on the pool and returns (kInSave: makes them, as finish()).
  void start();
  /// Waits for every copy. Throws nnx::Error naming the tensors written past the fence before
  /// they were copied (kDeferred), or what a copy threw.
  void wait();
  /// Bytes copied deferred (after start() returned, or by a writer at the fence).
  size_t deferred_bytes() const { return deferred_bytes_; }

 private:
  struct Piece {
    char* dst;
    const char* src;
    size_t n;
  };
  HostSnapshot(const HostSnapshot&) = delete;
  HostSnapshot& operator=(const HostSnapshot&) = delete;
  at::Tensor buffer_for(const at::Tensor& src);
  void copy_pieces();
  void withdraw();
  void keep_buffers();
  at::Tensor copy_from_device(const at::Tensor& src, const at::Tensor& buf);
  void finish_device_copies();

  std::vector<at::Tensor>* reuse_;
  SnapshotTiming timing_;
  size_t next_ = 0;
  size_t deferred_bytes_ = 0;
  std::vector<at::Tensor> used_;
  std::vector<Piece> pieces_;
  std::vector<std::shared_ptr<DeferredCopy>> deferred_;
  std::shared_ptr<std::atomic<size_t>> next_task_;
  std::unique_ptr<TaskGroup> jobs_;
  std::shared_ptr<DeviceCopies> device_copies_;  // null until a device tensor is copied
  std::shared_ptr<DeviceFence> device_fence_;    // kDeferred: registered on each device source
  std::vector<at::Tensor> device_sources_;
  bool waited_ = false;
};

/// A host tensor for a snapshot. One of 1 MiB or more gets a mapping of its own (page-aligned,
/// so the direct write path writes it without staging), marked for transparent huge pages where
/// the kernel allows. Throws std::bad_alloc.
at::Tensor host_buffer(at::IntArrayRef sizes, at::ScalarType dtype);

}  // namespace nnx::checkpoint::io
