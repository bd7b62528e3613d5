#include "nnx/checkpoint/io/staging_buffers.h"

#include <cstdlib>
#include <new>

namespace nnx::checkpoint::io {

namespace {
constexpr size_t kStagingBuffers = 8;
}

StagingBuffers& StagingBuffers::instance() {
  static StagingBuffers* pool = new StagingBuffers;  // never destroyed: no order problem at exit
  return *pool;
}

char* StagingBuffers::take() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return !free_.empty() || made_ < kStagingBuffers; });
  if (!free_.empty()) {
    char* p = free_.back();
    free_.pop_back();
    return p;
  }
  void* p = nullptr;
  if (::posix_memalign(&p, kPage, kDirectSlice) != 0) throw std::bad_alloc();
  ++made_;
  return static_cast<char*>(p);
}

void StagingBuffers::give(char* p) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    free_.push_back(p);
  }
  cv_.notify_one();
}

}  // namespace nnx::checkpoint::io
