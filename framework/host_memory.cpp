#include "nnx/framework/host_memory.h"

#include "nnx/framework/compat.h"

#include <c10/core/CPUAllocator.h>
#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <string>

namespace nnx {

namespace {

// libtorch's CPU allocator for small blocks; large ones 2 MiB-aligned with MADV_HUGEPAGE. Both
// kinds are reported to libtorch's memory profiler and freed by the original allocator's deleter
// (which reports the free, then calls free()), as libtorch's own blocks are, so raw_deleter()
// holds for every block.
class HugePageCpuAllocator final : public c10::Allocator {
 public:
  explicit HugePageCpuAllocator(c10::Allocator* original) : original_(original) {}

  // libtorch 2.3 made allocate() non-const and copy_data() a required member.
#if NNX_TORCH_VERSION_AT_LEAST(2, 3)
  c10::DataPtr allocate(size_t nbytes) override { return allocate_block(nbytes); }
  void copy_data(void* dest, const void* src, std::size_t count) const override { default_copy_data(dest, src, count); }
#else
  c10::DataPtr allocate(size_t nbytes) const override { return allocate_block(nbytes); }
#endif
  c10::DeleterFnPtr raw_deleter() const override { return original_->raw_deleter(); }

 private:
  c10::DataPtr allocate_block(size_t nbytes) const {
    // Sizes libtorch's allocator refuses (over PTRDIFF_MAX) go to it for its error.
    if (nbytes < kHugePageBytes || nbytes > size_t(PTRDIFF_MAX) || original_->raw_deleter() == nullptr)
      return original_->allocate(nbytes);
    // The advice covers only huge pages inside the block, never a neighbour's bytes. A block's
    // last, partial huge page joins it when that wastes at most an eighth of the block (a
    // 3.8 MiB tensor would otherwise sit half on 4 KiB pages).
    const size_t rounded = (nbytes + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
    const size_t size = rounded - nbytes <= nbytes / 8 ? rounded : nbytes;
    void* p = nullptr;
    // Out of memory: libtorch's allocator tries once more and, failing, throws its c10::Error
    // (and tells the profiler), as callers expect.
    if (::posix_memalign(&p, kHugePageBytes, size) != 0) return original_->allocate(nbytes);
    // A refusal (EINVAL on a kernel without THP) leaves 4 KiB pages, which still work.
    (void)::madvise(p, size / kHugePageBytes * kHugePageBytes, MADV_HUGEPAGE);
    c10::profiledCPUMemoryReporter().New(p, nbytes);  // the original deleter reports the free
    return {p, p, original_->raw_deleter(), c10::Device(c10::DeviceType::CPU)};
  }

  c10::Allocator* original_;
};

// Whether the kernel offers transparent huge pages to a process that asks (modes "always" or
// "madvise" are selected, shown in brackets).
bool kernel_offers_thp() {
  std::ifstream in("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string modes;
  std::getline(in, modes);
  return modes.find("[always]") != std::string::npos || modes.find("[madvise]") != std::string::npos;
}

}  // namespace

bool use_huge_pages_for_large_tensors() {
  static std::once_flag once;
  static bool installed = false;
  std::call_once(once, [] {
    const char* opt = std::getenv("NNX_HUGE_PAGES");
    if ((opt != nullptr && std::string(opt) == "0") || std::getenv("LD_PRELOAD") != nullptr || !kernel_offers_thp()) return;
    // Never destroyed: libtorch's registry keeps the pointer, and tensors may be freed during
    // static destruction.
    auto* allocator = new HugePageCpuAllocator(c10::GetCPUAllocator());
    c10::SetCPUAllocator(allocator, /*priority=*/1);
    installed = c10::GetCPUAllocator() == allocator;
  });
  return installed;
}

}  // namespace nnx
