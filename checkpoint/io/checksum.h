// The checksums of the format: XXH3 64-bit, written "xxh3_64:<16 hex digits>".
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace nnx::checkpoint::io {

/// "xxh3_64:<16 hex digits>" of `n` bytes (XXH3 with the best SIMD the CPU has; same values).
std::string checksum_bytes(const void* data, size_t n);
/// The same text for a 64-bit XXH3 value computed elsewhere (streaming over a file or slices).
std::string format_checksum(uint64_t xxh3_64);
/// Throws nnx::Error "<where>: checksum mismatch (stored <expected>, data <actual>); the
/// checkpoint is corrupt" unless the two are equal.
void expect_checksum(const std::string& actual, const std::string& expected, const std::string& where);

/// XXH3 64-bit over bytes given in pieces: equal to checksum_bytes of their concatenation.
class StreamingChecksum {
 public:
  /// Throws nnx::Error when the hash state cannot be allocated.
  StreamingChecksum();
  ~StreamingChecksum();
  StreamingChecksum(const StreamingChecksum&) = delete;
  StreamingChecksum& operator=(const StreamingChecksum&) = delete;
  /// Starts over (the checksum of no bytes).
  void reset();
  void update(const void* data, size_t n);
  /// "xxh3_64:<hex>" of the bytes so far.
  std::string hex() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace nnx::checkpoint::io
