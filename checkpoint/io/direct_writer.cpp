#include "nnx/checkpoint/io/direct_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "nnx/checkpoint/io/staging_buffers.h"
#include "nnx/framework/error.h"

namespace nnx::checkpoint::io {

namespace {
constexpr size_t kHashPiece = size_t(256) << 10;  // staged and hashed while in the core's cache
}

void pwrite_all(int fd, const char* p, size_t n, uint64_t offset, const std::string& where) {
  for (size_t done = 0; done < n;) {
    ssize_t r = ::pwrite(fd, p + done, n - done, static_cast<off_t>(offset + done));
    if (r < 0 && errno == EINTR) continue;
    NNX_CHECK_IO(r > 0, "cannot write ", n - done, " bytes of ", where, " at file offset ", offset + done, ": ",
                 r < 0 ? std::strerror(errno) : "no progress", " (disk full?)");
    done += static_cast<size_t>(r);
  }
}


DirectWriter::DirectWriter(int fd) {
  const std::string self = "/proc/self/fd/" + std::to_string(fd);
  fd_ = UniqueFd(::open(self.c_str(), O_WRONLY | O_CLOEXEC));
  if (fd_.valid()) direct_fd_ = UniqueFd(::open(self.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC));
}

// The writer jobs (writers_, the last member) are joined before the descriptors close.
DirectWriter::~DirectWriter() { failed_ = true; }

void DirectWriter::finish() { writers_.wait(); }

// Queues the write of one slice; a staging buffer goes back to the pool when it is done.
void DirectWriter::submit_write(const char* from, char* staged, size_t len, uint64_t at, const std::string& where) {
  writers_.submit([this, from, staged, len, at, where] {
    struct GiveBack {
      char* p;
      ~GiveBack() {
        if (p) StagingBuffers::instance().give(p);
      }
    } give_back{staged};
    if (failed_.load()) return;
    try {
      write_slice(from, len, at, where);
    } catch (...) {
      failed_ = true;  // later writes are skipped; the save fails at finish()
      throw;
    }
  });
}

std::string DirectWriter::write(const at::Tensor& t, uint64_t offset, const std::string& where) {
  NNX_INTERNAL_ASSERT(offset % kPage == 0 && t.is_contiguous() && t.is_cpu(), "bad direct write of ", where);
  const char* p = static_cast<const char*>(t.data_ptr());
  const uint64_t n = static_cast<uint64_t>(t.numel()) * t.element_size();
  const uint64_t body = n / kPage * kPage;
  keep_.push_back(t);
  ranges_.push_back({static_cast<int64_t>(offset), static_cast<int64_t>(n), p});
  // After a failed write the save fails at finish(): stage and write nothing more.
  if (failed_.load()) return std::string();
  hash_.reset();
  const bool aligned = reinterpret_cast<uintptr_t>(p) % kPage == 0;
  for (uint64_t off = 0; off < body; off += kDirectSlice) {
    const size_t len = static_cast<size_t>(std::min<uint64_t>(kDirectSlice, body - off));
    char* staged = nullptr;
    if (aligned) {
      hash_.update(p + off, len);
    } else {
      staged = StagingBuffers::instance().take();
      for (size_t piece = 0; piece < len; piece += kHashPiece) {
        const size_t m = std::min(kHashPiece, len - piece);
        std::memcpy(staged + piece, p + off + piece, m);
        hash_.update(staged + piece, m);
      }
    }
    submit_write(staged ? staged : p + off, staged, len, offset + off, where);
  }
  // The last partial page, through the page cache (by a writer job too: a write that extends
  // the file waits for the inode lock the direct writes hold).
  if (body < n) {
    hash_.update(p + body, n - body);
    submit_write(p + body, nullptr, n - body, offset + body, where);
  }
  return hash_.hex();
}

// Writes `len` bytes at `at`: page-aligned ones with O_DIRECT (through the page cache once the
// file system refused an O_DIRECT write with EINVAL), a tail through the page cache.
void DirectWriter::write_slice(const char* from, size_t len, uint64_t at, const std::string& where) {
  if (len % kPage != 0) return pwrite_all(fd_.get(), from, len, at, where);
  for (size_t done = 0; done < len;) {
    const bool direct = !buffered_.load();
    ssize_t r = ::pwrite(direct ? direct_fd_.get() : fd_.get(), from + done, len - done, static_cast<off_t>(at + done));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && errno == EINVAL && direct) {  // the file system refuses this O_DIRECT write
      buffered_ = true;
      continue;
    }
    NNX_CHECK_IO(r > 0, "cannot write ", len - done, " bytes of ", where, " at file offset ", at + done, ": ",
                 r < 0 ? std::strerror(errno) : "no progress", " (disk full?)");
    done += static_cast<size_t>(r);
  }
}

}  // namespace nnx::checkpoint::io
