#include "checkpoint/fs.h"

#include <fcntl.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#include <xxh_x86dispatch.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <random>
#include <sstream>
#include <thread>
#include <vector>

#include "checkpoint/hdf5_io.h"
#include "framework/error.h"

namespace nnx::checkpoint::fs {

void fsync_path(const stdfs::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  NNX_CHECK_IO(fd >= 0, "cannot open '", path.string(), "' to fsync: ", std::strerror(errno));
  int r = ::fsync(fd);
  int err = errno;
  ::close(fd);
  NNX_CHECK_IO(r == 0, "fsync of '", path.string(), "' failed: ", std::strerror(err));
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

std::pair<int64_t, std::string> file_size_and_checksum(const stdfs::path& path, const std::vector<MemoryRange>& from_memory) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  NNX_CHECK(fd >= 0, "cannot open '", path.string(), "': ", std::strerror(errno));
  std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> st(XXH3_createState(), XXH3_freeState);
  struct CloseFd {
    int fd;
    ~CloseFd() { ::close(fd); }
  } closer{fd};
  NNX_CHECK(st && XXH3_64bits_reset(st.get()) == XXH_OK, "cannot start a checksum of '", path.string(), "'");
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
      XXH3_64bits_update_dispatch(st.get(), buf.data(), static_cast<size_t>(n));
      pos += n;
    }
    return true;
  };
  for (const MemoryRange& r : from_memory) {
    NNX_INTERNAL_ASSERT(r.offset >= pos && r.size >= 0, "memory ranges of '", path.string(), "' overlap or are unsorted");
    NNX_CHECK(read_until(r.offset), "'", path.string(), "' ends before offset ", r.offset, " (truncated?)");
    XXH3_64bits_update_dispatch(st.get(), r.data, static_cast<size_t>(r.size));
    pos += r.size;
  }
  read_until(-1);
  struct stat sb {};
  NNX_CHECK(::fstat(fd, &sb) == 0 && sb.st_size == pos, "'", path.string(), "' has ", sb.st_size,
            " bytes, but bytes up to offset ", pos, " were written (truncated?)");
  return {pos, format_checksum(XXH3_64bits_digest(st.get()))};
}

std::pair<int64_t, std::string> fsync_and_checksum(const stdfs::path& path) {
  std::exception_ptr sync_error;
  std::thread sync([&] {
    try {
      fsync_path(path);
    } catch (...) {
      sync_error = std::current_exception();
    }
  });
  std::pair<int64_t, std::string> out;
  std::exception_ptr read_error;
  try {
    out = file_size_and_checksum(path);
  } catch (...) {
    read_error = std::current_exception();
  }
  sync.join();
  if (sync_error) std::rethrow_exception(sync_error);  // an I/O failure (exit 1) first
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

}  // namespace nnx::checkpoint::fs
