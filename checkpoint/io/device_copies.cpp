#include "nnx/checkpoint/io/device_copies.h"

#include <ATen/ATen.h>
#include <c10/core/Event.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include "nnx/framework/compat.h"
#include "nnx/framework/error.h"

namespace nnx::checkpoint::io {

// One device's side stream and the event recorded after its latest copy.
struct DeviceCopies::PerDevice {
  explicit PerDevice(const c10::Device& d)
      : device(d), impl(d.type()), side(impl.getStreamFromGlobalPool(d)), copied(d.type()) {
    // The side stream starts after everything the caller queued so far (the step's kernels).
    c10::Event produced(d.type());
    produced.record(impl.getStream(d));
    produced.block(side);
  }
  c10::Device device;
  c10::impl::VirtualGuardImpl impl;
  c10::Stream side;
  c10::Event copied;
};

DeviceCopies::DeviceCopies() = default;

DeviceCopies::~DeviceCopies() {
  try {
    synchronize();
  } catch (...) {  // a destructor cannot report; the save that owned these copies already failed
  }
}

DeviceCopies::PerDevice& DeviceCopies::on(const c10::Device& device) {
  for (auto& d : devices_)
    if (d->device == device) return *d;
  devices_.push_back(std::make_unique<PerDevice>(device));
  return *devices_.back();
}

void DeviceCopies::enqueue(const at::Tensor& src, const at::Tensor& dst) {
  NNX_INTERNAL_ASSERT(!src.is_cpu() && dst.is_cpu(), "DeviceCopies::enqueue copies a device tensor to the host");
  std::lock_guard<std::mutex> lock(mu_);
  PerDevice& d = on(src.device());
  {
    c10::StreamGuard guard(d.side);
    dst.copy_(src, /*non_blocking=*/dst.is_pinned());
  }
  // The caller may drop `src` before the copy ran; its memory must not be reused until then.
  if (src.has_storage()) d.impl.recordDataPtrOnStream(src.storage().data_ptr(), d.side);
  d.copied.record(d.side);
}

void DeviceCopies::order_before(const c10::Stream& stream) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& d : devices_)
    if (d->device == stream.device() && d->copied.was_marked_for_recording()) d->copied.block(stream);
}

void DeviceCopies::synchronize() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& d : devices_) compat::synchronize_stream(d->side);
}

at::Tensor DeviceCopies::pinned(at::IntArrayRef sizes, at::ScalarType dtype) {
  return at::empty(sizes, at::TensorOptions().dtype(dtype).pinned_memory(true));
}

}  // namespace nnx::checkpoint::io
