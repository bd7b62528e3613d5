// The direct I/O paths where the file system refuses O_DIRECT at the first write or read, as
// gVisor may (the GPU machines run under it): the refusal is injected by interposing pwrite and
// pread for descriptors opened with O_DIRECT, and the same bytes must go through the page cache.
#include <ATen/ATen.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>

#include "nnx/checkpoint/checkpointer.h"
#include "nnx/checkpoint/io/io_stats.h"
#include "nnx/checkpoint/verify.h"
#include "test_util.h"

namespace {
std::atomic<bool> g_refuse_direct{false};
std::atomic<int> g_refused{0};

bool refused(int fd) {
  if (!g_refuse_direct.load()) return false;
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || !(flags & O_DIRECT)) return false;
  ++g_refused;
  errno = EINVAL;
  return true;
}
// Drops the files under `dir` from the page cache (written back first by the commit's fsync).
void evict_from_page_cache(const std::filesystem::path& dir) {
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    const int fd = ::open(e.path().c_str(), O_RDONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0) << e.path();
    ::fdatasync(fd);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
}
}  // namespace

// Interposed over libc's for the whole test binary; they forward to the system calls unless a
// test turned the refusal on. (This executable's definitions win over libc's for every caller.)
extern "C" ssize_t pwrite(int fd, const void* buf, size_t n, off_t offset) {
  if (refused(fd)) return -1;
  return ::syscall(SYS_pwrite64, fd, buf, n, offset);
}
extern "C" ssize_t pread(int fd, void* buf, size_t n, off_t offset) {
  if (refused(fd)) return -1;
  return ::syscall(SYS_pread64, fd, buf, n, offset);
}

using namespace nnx;
using namespace nnx::checkpoint;

TEST(DirectIoFallback, RefusedODirectWritesAndReadsGoThroughThePageCache) {
  test::TempDir dir;
  State s;
  for (int i = 0; i < 4; ++i) s.insert("w" + std::to_string(i), {Param, at::randn({1 << 20}), {}});  // 4 MiB each
  Checkpointer ck;
  {  // Is O_DIRECT possible here at all? (tmpfs refuses it at open: nothing to inject then)
    io::IoStatsScope probe;
    ck.save(dir / "probe", Composite{{"params", StandardSave(s)}});
    if (probe.stats().direct_writes == 0) GTEST_SKIP() << "this file system refuses O_DIRECT at open";
  }
  g_refused = 0;
  g_refuse_direct = true;
  struct Off {
    ~Off() { g_refuse_direct = false; }
  } off;
  ck.save(dir / "1", Composite{{"params", StandardSave(s)}});
  EXPECT_GT(g_refused.load(), 0) << "no O_DIRECT write was attempted, so none was refused";
  const int writes_refused = g_refused.load();
  evict_from_page_cache(dir / "1");  // cold: the checksum pass reads ahead with O_DIRECT
  auto back = ck.restore(dir / "1", Composite{{"params", StandardRestore(s)}}).state("params");
  EXPECT_TRUE(back.equal(s));
  EXPECT_GT(g_refused.load(), writes_refused) << "no O_DIRECT read was attempted, so none was refused";
  evict_from_page_cache(dir / "1");
  const auto report = verify(dir / "1");
  EXPECT_TRUE(report.ok) << (report.problems.empty() ? "" : report.problems[0]);
  EXPECT_GT(report.bytes_checked, 0);
}
