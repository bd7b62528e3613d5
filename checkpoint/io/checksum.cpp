#include "nnx/checkpoint/io/checksum.h"

#include <xxhash.h>
#include <xxh_x86dispatch.h>  // XXH3 with the best SIMD the CPU has (AVX2 here); same hash values

#include <cstdio>

#include "nnx/framework/error.h"

namespace nnx::checkpoint::io {

std::string checksum_bytes(const void* data, size_t n) { return format_checksum(XXH3_64bits_dispatch(data, n)); }

std::string format_checksum(uint64_t xxh3_64) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "xxh3_64:%016llx", static_cast<unsigned long long>(xxh3_64));
  return buf;
}

void expect_checksum(const std::string& actual, const std::string& expected, const std::string& where) {
  NNX_CHECK(actual == expected, where, ": checksum mismatch (stored ", expected, ", data ", actual,
            "); the checkpoint is corrupt");
}

struct StreamingChecksum::State {
  XXH3_state_t* s = XXH3_createState();
  ~State() { XXH3_freeState(s); }
};

StreamingChecksum::StreamingChecksum() : state_(std::make_unique<State>()) {
  NNX_CHECK(state_->s && XXH3_64bits_reset(state_->s) == XXH_OK, "cannot start a checksum (out of memory)");
}
StreamingChecksum::~StreamingChecksum() = default;
void StreamingChecksum::reset() { XXH3_64bits_reset(state_->s); }
void StreamingChecksum::update(const void* data, size_t n) { XXH3_64bits_update_dispatch(state_->s, data, n); }
std::string StreamingChecksum::hex() const { return format_checksum(XXH3_64bits_digest(state_->s)); }

}  // namespace nnx::checkpoint::io
