#include "nnx/checkpoint/io/fs.h"

#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <vector>

#include "nnx/checkpoint/io/checksum.h"
#include "nnx/checkpoint/io/task_group.h"
#include "nnx/framework/error.h"

namespace nnx::checkpoint::io {

namespace stdfs = std::filesystem;

void fsync_path(const stdfs::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  NNX_CHECK_IO(fd >= 0, "cannot open '", path.string(), "' to fsync: ", std::strerror(errno));
  int r = ::fsync(fd);
  int err = errno;
  ::close(fd);
  NNX_CHECK_IO(r == 0, "fsync of '", path.string(), "' failed: ", std::strerror(err));
}

namespace {
thread_local int g_remove_errno = 0;  // nftw's callback takes no context: the first failure
int remove_entry(const char* p, const struct stat*, int, struct FTW*) {
  if (::remove(p) != 0 && errno != ENOENT && g_remove_errno == 0) g_remove_errno = errno;
  return 0;  // go on: remove what can be removed
}
}  // namespace

void remove_tree(const stdfs::path& path, std::error_code& ec) noexcept {
  ec.clear();
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno != ENOENT) ec = std::error_code(errno, std::generic_category());
    return;
  }
  g_remove_errno = 0;
  if (::nftw(path.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0 && g_remove_errno == 0) g_remove_errno = errno;
  if (g_remove_errno != 0) ec = std::error_code(g_remove_errno, std::generic_category());
}

void rename_no_replace(const stdfs::path& from, const stdfs::path& to) {
  int r = ::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE);
  if (r != 0 && errno == EINVAL) {  // file systems without RENAME_NOREPLACE
    NNX_CHECK_IO(!stdfs::exists(to), "cannot commit '", to.string(), "': it already exists");
    r = ::rename(from.c_str(), to.c_str());
  }
  NNX_CHECK_IO(r == 0, "cannot rename '", from.string(), "' to '", to.string(), "': ",
               std::strerror(errno));
  fsync_path(to.parent_path().empty() ? stdfs::path(".") : to.parent_path());
}

std::string unique_suffix() {
  std::random_device rd;
  std::ostringstream os;
  os << ::getpid() << "-" << std::hex << ((uint64_t(rd()) << 32) | rd());
  return os.str();
}

UniqueFd::~UniqueFd() {
  if (fd_ >= 0) ::close(fd_);
}

namespace {
// A file opened read-only for hashing; throws nnx::Error naming it.
UniqueFd open_read_only(const stdfs::path& path) {
  UniqueFd f(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  NNX_CHECK(f.valid(), "cannot open '", path.string(), "': ", std::strerror(errno));
  return f;
}
}  // namespace

std::pair<int64_t, std::string> file_size_and_checksum(const stdfs::path& path, const std::vector<MemoryRange>& from_memory) {
  const UniqueFd file = open_read_only(path);
  const int fd = file.get();
  StreamingChecksum st;
  std::vector<char> buf(256 << 10);
  int64_t pos = 0;
  // Hashes the file's bytes [pos, end) (end < 0: to the end of the file); returns false at EOF.
  auto read_until = [&](int64_t end) {
    while (end < 0 || pos < end) {
      const size_t want = end < 0 ? buf.size() : static_cast<size_t>(std::min<int64_t>(end - pos, static_cast<int64_t>(buf.size())));
      ssize_t n = ::pread(fd, buf.data(), want, static_cast<off_t>(pos));
      if (n < 0 && errno == EINTR) continue;
      NNX_CHECK(n >= 0, "cannot read '", path.string(), "': ", std::strerror(errno));
      if (n == 0) return false;
      st.update(buf.data(), static_cast<size_t>(n));
      pos += n;
    }
    return true;
  };
  for (const MemoryRange& r : from_memory) {
    NNX_INTERNAL_ASSERT(r.offset >= pos && r.size >= 0, "memory ranges of '", path.string(), "' overlap or are unsorted");
    NNX_CHECK(read_until(r.offset), "'", path.string(), "' ends before offset ", r.offset, " (truncated?)");
    st.update(r.data, static_cast<size_t>(r.size));
    pos += r.size;
  }
  read_until(-1);
  struct stat sb {};
  NNX_CHECK(::fstat(fd, &sb) == 0 && sb.st_size == pos, "'", path.string(), "' has ", sb.st_size,
            " bytes, but bytes up to offset ", pos, " were written (truncated?)");
  return {pos, st.hex()};
}

namespace {
constexpr int64_t kPage = 4096;

// Reads the blocks of a file that a hash needs without disturbing the page cache's readahead:
// blocks whose pages are all cached (mincore on a mapping, which starts no I/O, unlike a
// RWF_NOWAIT read) are read normally; the others with O_DIRECT, all at once on a few threads
// before the hash, so a cold file gets no scattered cached pages that break the kernel's
// sequential readahead for the data reads that follow. Measured in Python on a cold 400 MB
// checkpoint: 60 ms of data reads became 130-170 ms after buffered reads of its 100 gaps, and
// stayed 58-63 ms after O_DIRECT ones. Falls back to plain reads where O_DIRECT or the mapping
// is refused.
class CacheNeutralReader {
 public:
  static constexpr int64_t kBlock = 256 << 10;

  CacheNeutralReader(int fd, const stdfs::path& path, int64_t size) : fd_(fd), path_(path), size_(size) {
    if (size_ > 0) {
      map_ = ::mmap(nullptr, static_cast<size_t>(size_), PROT_READ, MAP_SHARED, fd_, 0);
      if (map_ == MAP_FAILED) map_ = nullptr;
    }
  }
  ~CacheNeutralReader() {
    if (map_) ::munmap(map_, static_cast<size_t>(size_));
    if (direct_fd_ >= 0) ::close(direct_fd_);
  }

  // Reads the uncached ones of `blocks` ((offset, length <= kBlock) pairs) with O_DIRECT on up
  // to 8 threads, up to 64 MiB in all (the rest is read when hashed).
  void prefetch(const std::vector<ByteRange>& blocks) {
    if (!map_) return;
    std::vector<size_t> cold;  // at most 256 blocks (66 MiB of buffers) are read ahead
    for (size_t i = 0; i < blocks.size() && cold.size() < 256; ++i)
      if (!cached(blocks[i])) cold.push_back(i);
    if (cold.empty()) return;
    direct_fd_ = ::open(path_.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
    if (direct_fd_ < 0) return;
    std::vector<std::unique_ptr<char, decltype(&std::free)>> bufs;
    for (size_t k = 0; k < cold.size(); ++k) bufs.emplace_back(aligned_block(), &std::free);
    std::vector<const char*> got(cold.size(), nullptr);
    io::TaskGroup readers(8);
    for (size_t k = 0; k < cold.size(); ++k)
      readers.submit([&, k] { got[k] = read_direct(blocks[cold[k]], bufs[k].get()); });
    readers.wait();
    for (size_t k = 0; k < cold.size(); ++k)
      if (got[k]) prefetched_.emplace(blocks[cold[k]].offset, Prefetched{std::move(bufs[k]), got[k]});
  }

  // The bytes of `b`, from the prefetch or read now.
  const char* read(const ByteRange& b) {
    auto it = prefetched_.find(b.offset);
    if (it != prefetched_.end()) return it->second.data;
    if (!buf_) buf_.reset(aligned_block());
    size_t done = 0;
    while (done < static_cast<size_t>(b.size)) {
      ssize_t n = ::pread(fd_, buf_.get() + done, static_cast<size_t>(b.size) - done, static_cast<off_t>(b.offset) + static_cast<off_t>(done));
      if (n < 0 && errno == EINTR) continue;
      NNX_CHECK(n > 0, "cannot read '", path_.string(), "' at offset ", b.offset + static_cast<int64_t>(done), ": ",
                n == 0 ? "unexpected end of file" : std::strerror(errno));
      done += static_cast<size_t>(n);
    }
    return buf_.get();
  }

 private:
  struct Prefetched {
    std::unique_ptr<char, decltype(&std::free)> buf;
    const char* data;
  };
  static char* aligned_block() {
    void* p = nullptr;
    if (::posix_memalign(&p, kPage, static_cast<size_t>(kBlock + 2 * kPage)) != 0) throw std::bad_alloc();
    return static_cast<char*>(p);
  }
  bool cached(const ByteRange& b) const {
    const int64_t from = b.offset / kPage * kPage, to = b.offset + b.size;
    unsigned char resident[kBlock / kPage + 2];
    if (::mincore(static_cast<char*>(map_) + from, static_cast<size_t>(to - from), resident) != 0) return true;
    for (int64_t i = 0; i < (to - from + kPage - 1) / kPage; ++i)
      if (!(resident[i] & 1)) return false;
    return true;
  }
  // `b` read with O_DIRECT into `buf` (whole pages around it); null when the read fails.
  const char* read_direct(const ByteRange& b, char* buf) const {
    const int64_t from = b.offset / kPage * kPage;
    const int64_t to = std::min((b.offset + b.size + kPage - 1) / kPage * kPage, (size_ + kPage - 1) / kPage * kPage);
    int64_t done = 0;
    while (from + done < to) {
      ssize_t n = ::pread(direct_fd_, buf + done, static_cast<size_t>(to - from - done), static_cast<off_t>(from + done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;  // the end of the file (its last partial page), or O_DIRECT refused
      done += n;
    }
    return done >= b.offset + b.size - from ? buf + (b.offset - from) : nullptr;
  }

  int fd_;
  const stdfs::path& path_;
  int64_t size_;
  void* map_ = nullptr;
  int direct_fd_ = -1;
  std::unique_ptr<char, decltype(&std::free)> buf_{nullptr, &std::free};
  std::map<int64_t, Prefetched> prefetched_;
};
}  // namespace

std::pair<int64_t, std::string> checksum_outside(const stdfs::path& path, const std::vector<ByteRange>& skip) {
  const UniqueFd file = open_read_only(path);
  const int fd = file.get();
  struct stat sb {};
  NNX_CHECK(::fstat(fd, &sb) == 0, "cannot stat '", path.string(), "': ", std::strerror(errno));
  const int64_t size = sb.st_size;
  int64_t pos = 0;
  for (const ByteRange& r : skip) {
    NNX_CHECK(r.offset >= pos && r.size >= 0 && r.size <= size - r.offset, "'", path.string(), "': raw data range [",
              r.offset, ", +", r.size, ") is out of order or past the end of the file (", size, " bytes)");
    pos = r.offset + r.size;
  }
  StreamingChecksum st;
  if (!skip.empty()) st.update(skip.data(), skip.size() * sizeof(ByteRange));
  std::vector<ByteRange> blocks;  // the bytes outside `skip`, in blocks of at most kBlock
  auto add = [&](int64_t from, int64_t to) {
    for (; from < to; from += CacheNeutralReader::kBlock)
      blocks.push_back({from, std::min<int64_t>(to - from, CacheNeutralReader::kBlock)});
  };
  pos = 0;
  for (const ByteRange& r : skip) {
    add(pos, r.offset);
    pos = r.offset + r.size;
  }
  add(pos, size);
  CacheNeutralReader reader(fd, path, size);
  reader.prefetch(blocks);
  for (const ByteRange& b : blocks) st.update(reader.read(b), static_cast<size_t>(b.size));
  return {size, st.hex()};
}

std::pair<int64_t, std::string> fsync_and_checksum(const stdfs::path& path) {
  io::TaskGroup sync(1);
  sync.submit([&] { fsync_path(path); });
  std::pair<int64_t, std::string> out;
  std::exception_ptr read_error;
  try {
    out = file_size_and_checksum(path);
  } catch (...) {
    read_error = std::current_exception();
  }
  sync.wait();  // an I/O failure (exit 1) first
  if (read_error) std::rethrow_exception(read_error);
  return out;
}

void write_file_synced(const stdfs::path& path, const std::string& text) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  NNX_CHECK_IO(fd >= 0, "cannot create '", path.string(), "': ", std::strerror(errno));
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      ::close(fd);
      NNX_CHECK_IO(false, "cannot write '", path.string(), "': ", std::strerror(err));
    }
    done += static_cast<size_t>(n);
  }
  int r = ::fsync(fd);
  int err = errno;
  ::close(fd);
  NNX_CHECK_IO(r == 0, "fsync of '", path.string(), "' failed: ", std::strerror(err));
}

std::string read_file(const stdfs::path& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  NNX_CHECK(f != nullptr, "cannot open '", path.string(), "': ", std::strerror(errno));
  std::string out;
  char buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
  std::fclose(f);
  return out;
}

DirectoryLock::DirectoryLock(const stdfs::path& directory) {
  stdfs::path p = directory / ".nnx-writer.lock";
  fd_ = ::open(p.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  NNX_CHECK_IO(fd_ >= 0, "cannot open lock file '", p.string(), "': ", std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    char buf[32] = {0};
    ssize_t n = ::pread(fd_, buf, sizeof(buf) - 1, 0);
    ::close(fd_);
    fd_ = -1;
    NNX_CHECK(false, "checkpoint directory '", directory.string(), "' is in use by another writer",
              n > 0 ? " (pid " + std::string(buf, static_cast<size_t>(n)) + ")" : std::string(),
              "; only one CheckpointManager may write to a directory");
  }
  std::string pid = std::to_string(::getpid());
  if (::ftruncate(fd_, 0) == 0) {
    ssize_t w = ::pwrite(fd_, pid.data(), pid.size(), 0);
    (void)w;
  }
}

DirectoryLock::~DirectoryLock() {
  if (fd_ >= 0) {
    ::flock(fd_, LOCK_UN);
    ::close(fd_);
  }
}

}  // namespace nnx::checkpoint::io
