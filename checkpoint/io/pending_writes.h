// Writes still on their way to a file: the handle the write path returns and commit awaits.
#pragma once

#include <memory>
#include <vector>


namespace nnx::checkpoint::io {

class DirectWriter;

/// The writes a write_state call left in flight (its large datasets' O_DIRECT writes), as a
/// value: H5File::close() and commit() take it and wait for them, and refuse a file whose
/// writes they were not given, so no caller can commit bytes that are not on disk yet. The
/// tensors written must not change until then. Dropped without wait() (a save that fails before
/// commit), it skips the writes not yet started and waits for the running ones. Move-only.
class [[nodiscard]] PendingWrites {
 public:
  /// Nothing pending.
  PendingWrites() = default;
  /// The writes of `writer` (null: nothing).
  explicit PendingWrites(std::shared_ptr<DirectWriter> writer);
  PendingWrites(PendingWrites&&) noexcept = default;
  PendingWrites& operator=(PendingWrites&& other) noexcept;
  PendingWrites(const PendingWrites&) = delete;
  PendingWrites& operator=(const PendingWrites&) = delete;
  ~PendingWrites();
  /// Adds `other`'s writes (another item's of the same file, or another file's).
  PendingWrites& merge(PendingWrites other);
  /// Whether this holds the writes of `writer`.
  bool covers(const DirectWriter* writer) const;
  /// Waits for every write; throws the nnx::IOError of the earliest that failed (naming the
  /// dataset). Afterwards nothing is pending.
  void wait();

 private:
  void abandon() noexcept;
  std::vector<std::shared_ptr<DirectWriter>> writers_;
};

}  // namespace nnx::checkpoint::io
