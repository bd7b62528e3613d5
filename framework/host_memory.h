// Host memory for libtorch's CPU tensors: large ones on transparent huge pages.
#pragma once

#include <cstddef>

namespace nnx {

/// The size of a transparent huge page on x86-64 and arm64 with 4 KiB base pages (the kernel's
/// PMD size): CPU tensors of at least this many bytes go on huge pages once
/// use_huge_pages_for_large_tensors() ran.
inline constexpr size_t kHugePageBytes = size_t(2) << 20;

/// Installs a CPU allocator for libtorch (c10::SetCPUAllocator) that allocates every tensor of
/// kHugePageBytes or more at a 2 MiB boundary and advises MADV_HUGEPAGE over its whole 2 MiB
/// pages, as PyTorch 2.2+ does under THP_MEM_ALLOC_ENABLE=1; a block is rounded up to whole huge
/// pages when that adds at most an eighth of its size (so its tail is on a huge page too; such a
/// tensor holds up to 1/8 more resident memory). Smaller tensors come from libtorch's own CPU
/// allocator as before. Every block is freed with free(), as before. The advice stays on heap
/// ranges after their tensors are freed, so later allocations there may get huge pages too
/// (process-wide, peak RSS grew 6% for a 99 M-param GPT run), and with the kernel's default
/// `defrag` setting a first touch may wait for compaction on a host whose memory is fragmented.
/// Out of memory is libtorch's c10::Error, as before.
///
/// Why: a restore (and a model's initialisation) first-touches the whole state. With 4 KiB pages
/// that is one page fault per 4 KiB (a 99 M-param GPT resuming in nnx-train: 650 k minor faults,
/// 14-16 s of system time on the test VM); a fault per 2 MiB instead is 512 times fewer.
///
/// Takes effect for tensors allocated afterwards (earlier ones keep their memory). Idempotent.
/// Not thread-safe against other threads allocating tensors (libtorch's allocator registry is a
/// plain pointer): call it at start-up, before other threads run.
/// Returns false and installs nothing when the environment has NNX_HUGE_PAGES=0, when the kernel
/// has no transparent huge pages or has them off ("never" in
/// /sys/kernel/mm/transparent_hugepage/enabled), or when LD_PRELOAD is set (another malloc then
/// decides how memory is paged).
bool use_huge_pages_for_large_tensors();

}  // namespace nnx
