#include "nnx/checkpoint/io/parallel_reader.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>
#include <thread>

#include "nnx/checkpoint/io/io_stats.h"
#include "nnx/framework/error.h"

namespace nnx::checkpoint::io {

namespace {
constexpr size_t kSlice = size_t(256) << 10;  // read, then hashed from the cache
constexpr size_t kPiece = size_t(32) << 20;   // of a dataset read by several jobs
}  // namespace

void read_slices(int fd, char* p, size_t n, uint64_t offset, const std::string& where, StreamingChecksum* hash) {
  for (size_t done = 0; done < n;) {
    ssize_t r = ::pread(fd, p + done, std::min(n - done, kSlice), static_cast<off_t>(offset + done));
    if (r < 0 && errno == EINTR) continue;
    NNX_CHECK(r > 0, "cannot read ", where, ": ", r < 0 ? std::strerror(errno) : "unexpected end of file",
              " (file truncated or corrupt?)");
    if (hash) hash->update(p + done, static_cast<size_t>(r));
    done += static_cast<size_t>(r);
  }
}

void check_tensor_checksum(const at::Tensor& t, const std::string& expected, const std::string& where) {
  const size_t nbytes = static_cast<size_t>(t.numel() * t.element_size());
  expect_checksum(checksum_bytes(nbytes ? t.data_ptr() : nullptr, nbytes), expected, where);
}

ParallelReader::ParallelReader(bool verify)
    : verify_(verify), readers_(std::clamp(static_cast<int>(std::thread::hardware_concurrency()), 2, 4)) {}

void ParallelReader::check(const at::Tensor& t, std::string expected, std::string where) {
  if (!verify_) return;
  if (t.numel() * t.element_size() < kLargeDataset) return check_tensor_checksum(t, expected, where);
  readers_.submit([t, expected = std::move(expected), where = std::move(where)] { check_tensor_checksum(t, expected, where); });
}

void ParallelReader::read_at(const at::Tensor& t, int fd, uint64_t offset, std::string expected, std::string where) {
  NNX_INTERNAL_ASSERT(fd >= 0, "no descriptor for direct reads of ", where);
  count_read(true, t.numel() * t.element_size());
  if (static_cast<size_t>(t.numel() * t.element_size()) >= 2 * kPiece)
    return read_in_pieces(t, fd, offset, std::move(expected), std::move(where));
  readers_.submit([this, t, fd, offset, expected = std::move(expected), where = std::move(where)] {
    std::unique_ptr<StreamingChecksum> hash(verify_ ? new StreamingChecksum : nullptr);
    read_slices(fd, static_cast<char*>(t.data_ptr()), static_cast<size_t>(t.numel() * t.element_size()), offset, where,
                hash.get());
    if (hash) expect_checksum(hash->hex(), expected, where);
  });
}

void ParallelReader::read_in_pieces(const at::Tensor& t, int fd, uint64_t offset, std::string expected, std::string where) {
  char* p = static_cast<char*>(t.data_ptr());
  const size_t n = static_cast<size_t>(t.numel() * t.element_size());
  const size_t pieces = (n + kPiece - 1) / kPiece;
  auto left = std::make_shared<std::atomic<size_t>>(pieces);
  auto shared_where = std::make_shared<const std::string>(std::move(where));
  auto shared_expected = std::make_shared<const std::string>(std::move(expected));
  for (size_t i = 0; i < pieces; ++i)
    readers_.submit([this, t, p, n, i, fd, offset, left, shared_where, shared_expected] {
      const size_t from = i * kPiece;
      read_slices(fd, p + from, std::min(kPiece, n - from), offset + from, *shared_where, nullptr);
      // The last piece's job hashes the whole tensor.
      if (left->fetch_sub(1) == 1 && verify_) check_tensor_checksum(t, *shared_expected, *shared_where);
    });
}

}  // namespace nnx::checkpoint::io
