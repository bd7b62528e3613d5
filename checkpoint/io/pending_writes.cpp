#include "nnx/checkpoint/io/pending_writes.h"

#include <algorithm>
#include <exception>

#include "nnx/checkpoint/io/direct_writer.h"

namespace nnx::checkpoint::io {

PendingWrites::PendingWrites(std::shared_ptr<DirectWriter> writer) {
  if (writer) writers_.push_back(std::move(writer));
}

PendingWrites& PendingWrites::operator=(PendingWrites&& other) noexcept {
  if (this != &other) {
    abandon();
    writers_ = std::move(other.writers_);
    other.writers_.clear();
  }
  return *this;
}

PendingWrites::~PendingWrites() { abandon(); }

void PendingWrites::abandon() noexcept {
  for (auto& w : writers_) {
    w->cancel();
    try {
      w->finish();
    } catch (...) {  // the save is failing anyway; its own error is the one reported
    }
  }
  writers_.clear();
}

PendingWrites& PendingWrites::merge(PendingWrites other) {
  for (auto& w : other.writers_)
    if (!covers(w.get())) writers_.push_back(std::move(w));
  other.writers_.clear();
  return *this;
}

bool PendingWrites::covers(const DirectWriter* writer) const {
  return std::any_of(writers_.begin(), writers_.end(), [&](const auto& w) { return w.get() == writer; });
}

void PendingWrites::wait() {
  std::exception_ptr first;
  for (auto& w : writers_) {
    try {
      w->finish();
    } catch (...) {
      if (!first) first = std::current_exception();
    }
  }
  writers_.clear();
  if (first) std::rethrow_exception(first);
}

}  // namespace nnx::checkpoint::io
