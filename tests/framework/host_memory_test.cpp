#include "nnx/framework/host_memory.h"

#include <ATen/ATen.h>
#include <c10/core/CPUAllocator.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

namespace {

// The VmFlags line of the mapping in /proc/self/smaps that holds `p` ("" when none does).
std::string vm_flags_of(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  std::ifstream in("/proc/self/smaps");
  std::string line;
  bool inside = false;
  while (std::getline(in, line)) {
    unsigned long lo = 0, hi = 0;
    char dash = 0;
    std::istringstream header(line);
    if (header >> std::hex >> lo >> dash >> hi && dash == '-' && line.find(' ') < line.find(':')) {
      inside = a >= lo && a < hi;
      continue;
    }
    if (inside && line.rfind("VmFlags:", 0) == 0) return line;
  }
  return "";
}

bool kernel_offers_thp() {
  std::ifstream in("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string modes;
  std::getline(in, modes);
  return modes.find("[always]") != std::string::npos || modes.find("[madvise]") != std::string::npos;
}

uintptr_t address(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()); }

}  // namespace

// A tensor of 2 MiB or more starts on a huge-page boundary and its whole huge pages carry the
// advice (VmFlags "hg"); a small one does not move to such a boundary on purpose; both free
// through libtorch's own deleter.
TEST(HostMemory, LargeTensorsGetHugePageAdviceAndSmallOnesKeepTheDefault) {
  if (std::getenv("LD_PRELOAD") || !kernel_offers_thp()) GTEST_SKIP() << "no transparent huge pages to ask for here";
  // libtorch's own allocator, taken the first time (the install is once per process, so a
  // repeated test in the same process sees it installed already).
  static c10::Allocator* const before = c10::GetCPUAllocator();
  ASSERT_TRUE(nnx::use_huge_pages_for_large_tensors());
  EXPECT_TRUE(nnx::use_huge_pages_for_large_tensors());  // idempotent
  EXPECT_NE(c10::GetCPUAllocator(), before);
  EXPECT_EQ(c10::GetCPUAllocator()->raw_deleter(), before->raw_deleter());

  for (int64_t numel : {int64_t(1) << 19, int64_t(5) << 20, int64_t(25) << 20}) {  // 2, 20, 100 MiB of float32
    at::Tensor t = at::empty({numel});
    EXPECT_EQ(address(t) % nnx::kHugePageBytes, 0u) << numel;
    t.fill_(1.5);
    EXPECT_NE(vm_flags_of(t.data_ptr()).find(" hg"), std::string::npos) << vm_flags_of(t.data_ptr());
    EXPECT_EQ(t.sum().item<double>(), 1.5 * static_cast<double>(numel));
  }
  // The last, partial huge page is on a huge page when that adds at most 1/8: 4,000,000 bytes
  // are rounded up to 4 MiB. (That a 2.36 MB tensor's tail is not advised is not asserted: the
  // advice stays on heap ranges freed earlier, where the tail may land.)
  at::Tensor rounded = at::empty({1000 * 1000});
  const char* last_byte = static_cast<const char*>(rounded.data_ptr()) + rounded.nbytes() - 1;
  EXPECT_NE(vm_flags_of(last_byte).find(" hg"), std::string::npos) << vm_flags_of(last_byte);

  // Smaller than a huge page: libtorch's allocator as before (64-byte aligned, no advice asked).
  at::Tensor small = at::ones({1000});
  EXPECT_EQ(address(small) % 64, 0u);
  EXPECT_EQ(small.sum().item<float>(), 1000.0f);

  // The raw interface frees what it allocates through the same deleter.
  void* raw = c10::GetCPUAllocator()->raw_allocate(size_t(3) << 20);
  ASSERT_NE(raw, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(raw) % nnx::kHugePageBytes, 0u);
  c10::GetCPUAllocator()->raw_deallocate(raw);
}

// Sizes libtorch refuses and allocations that fail are libtorch's c10::Error, as without it.
TEST(HostMemory, ImpossibleSizesAreLibtorchsError) {
  if (std::getenv("LD_PRELOAD") || !kernel_offers_thp()) GTEST_SKIP() << "no transparent huge pages to ask for here";
  ASSERT_TRUE(nnx::use_huge_pages_for_large_tensors());
  c10::Allocator* a = c10::GetCPUAllocator();
  EXPECT_THROW(a->allocate(SIZE_MAX), c10::Error);  // would wrap when rounded up to 2 MiB
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "ASan aborts on an allocation of 1 EiB instead of failing it";
#else
  EXPECT_THROW(a->allocate(size_t(1) << 60), c10::Error);  // posix_memalign fails: out of memory
#endif
}

// NNX_HUGE_PAGES=0 leaves libtorch's allocator in place (checked in a fresh process: the
// choice is made once per process).
TEST(HostMemory, NnxHugePagesZeroTurnsItOff) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        ::setenv("NNX_HUGE_PAGES", "0", 1);
        c10::Allocator* before = c10::GetCPUAllocator();
        const bool installed = nnx::use_huge_pages_for_large_tensors();
        std::exit(!installed && c10::GetCPUAllocator() == before ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "");
}
