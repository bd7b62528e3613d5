// A snapshot's device-to-host copies: queued on a side stream of each source device, after the
// work already queued on the caller's stream (the step that produced the values).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Stream.h>

#include <memory>
#include <mutex>
#include <vector>

namespace nnx::checkpoint::io {

/// Device-to-host copies on side streams, written on c10's device-generic API (streams, events,
/// VirtualGuardImpl), so the same code serves CUDA and any other accelerator libtorch knows.
/// For each device: an event recorded on the caller's current stream orders the side stream
/// after the step that produced the values; the copies run there non-blocking into pinned host
/// buffers; the caching allocator is told the side stream still reads the source, so freeing
/// it early cannot hand its memory to another tensor. Thread-safe.
class DeviceCopies {
 public:
  DeviceCopies();
  /// Waits for the copies still queued (a host buffer must not be freed under a copy).
  ~DeviceCopies();
  /// Queues `dst.copy_(src)`: `src` on a device, `dst` a host tensor of its dtype and shape,
  /// pinned for the copy to be asynchronous. Throws nnx::Error for a CPU `src`.
  void enqueue(const at::Tensor& src, const at::Tensor& dst);
  /// Makes `stream` (a writer's current stream on one of the devices) wait until the copies
  /// queued so far from its device have read their sources; the host does not block. The write
  /// fence on a device (framework/write_fence.h).
  void order_before(const c10::Stream& stream);
  /// Blocks the calling thread until every queued copy has landed in its host buffer.
  void synchronize();

  /// A pinned (page-locked) host tensor of `sizes` and `dtype`: the destination of an
  /// asynchronous device-to-host copy, or the staging of an asynchronous host-to-device one.
  /// Throws where this build has no pinned-memory allocator (a CPU-only libtorch).
  static at::Tensor pinned(at::IntArrayRef sizes, at::ScalarType dtype);

 private:
  struct PerDevice;
  DeviceCopies(const DeviceCopies&) = delete;
  DeviceCopies& operator=(const DeviceCopies&) = delete;
  PerDevice& on(const c10::Device& device);

  std::mutex mu_;
  std::vector<std::unique_ptr<PerDevice>> devices_;
};

}  // namespace nnx::checkpoint::io
