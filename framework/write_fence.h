// Write fences: in-place writers of state wait for deferred readers of the same bytes (an
// asynchronous checkpoint's snapshot copy) before they write.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <memory>

namespace nnx {

/// A reader of a tensor's bytes that may not have read them yet: a deferred snapshot copy.
/// Device-neutral: complete() returns once a write issued after it by the calling thread (on a
/// device, on the current stream) can no longer change what the reader sees. A host copy is made
/// or waited for on the calling thread; a device copy on a side stream would make the current
/// stream wait on the copy's event instead of blocking the host.
class PendingRead {
 public:
  virtual ~PendingRead() = default;
  /// Thread-safe; may be called any number of times, by any thread.
  virtual void complete() = 0;
};

/// Registers `read` on the storage of `t`: prepare_write() of any tensor sharing that storage (a
/// view, a detached alias) completes it first. The reader removes itself (remove_pending_read)
/// once it has read. A tensor without storage is ignored.
void add_pending_read(const at::Tensor& t, std::shared_ptr<PendingRead> read);

/// Removes `read` from the storage of `t`; nothing happens when it is not registered there.
void remove_pending_read(const at::Tensor& t, const PendingRead* read);

/// The fence: call before writing into `t` in place. Completes every pending read of its
/// storage (see PendingRead::complete). Costs one atomic load when no read is pending anywhere,
/// the usual case. The framework's writers of state call it (Optimizer, BatchNorm's running
/// statistics, Variable::mutable_value); a user's Transform or layer that writes state in
/// place must call it too.
void prepare_write(const at::Tensor& t);
/// prepare_write() for each tensor.
void prepare_write(c10::ArrayRef<at::Tensor> ts);

/// The number of reads registered now, over all storages (for tests and diagnostics).
size_t pending_read_count();

}  // namespace nnx
