// An open HDF5 file of a checkpoint: creation with the format's file properties, commit.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "nnx/checkpoint/io/fs.h"
#include "nnx/checkpoint/io/pending_writes.h"

namespace nnx::checkpoint {

namespace io {
class DirectWriter;
}

/// An open HDF5 file (RAII). Errors name the file.
class H5File {
 public:
  /// Creates `path` (must not exist) for writing; throws nnx::IOError naming it on failure.
  /// HDF5's own metadata is allocated from blocks of `meta_block_bytes` (meta_block_size()).
  static H5File create(const std::string& path, size_t meta_block_bytes = 256 << 10);
  /// The metadata block for a file of `state_bytes` of tensor data: 256 KiB from 16 MiB of state
  /// (HDF5's metadata then sits in a few contiguous runs, which the structure check before a
  /// restore reads in a few requests), halving down to 4 KiB below 256 KiB of state, whose file
  /// would otherwise be mostly the unused tail of one block (2.6 KiB of params took 272 KiB).
  static size_t meta_block_size(int64_t state_bytes);
  /// Opens `path` read-only; throws nnx::Error naming it when it is missing or not HDF5.
  static H5File open(const std::string& path);
  /// Opens `size` bytes of memory as a read-only HDF5 file (HDF5's core driver; the bytes are
  /// copied, nothing touches the disk). `name` stands for the file in errors. Throws
  /// nnx::Error naming it when the bytes are empty or not HDF5. (The fuzz target's way in.)
  static H5File open_image(const void* data, size_t size, const std::string& name);
  H5File(H5File&& o) noexcept;
  H5File& operator=(H5File&& o) noexcept;
  /// Closes the file; uncommitted direct writes are skipped (a save that failed).
  ~H5File();
  /// Flushes and closes, then waits for `pending` (what write_state returned for this file).
  /// Throws nnx::IOError naming the file (and the dataset of a failed write) on failure, and
  /// nnx::Error when the file has direct writes that `pending` does not hold.
  void close(io::PendingWrites pending = {});
  /// The commit protocol's end of a written file: close(pending), fsync, and its size and
  /// "xxh3_64:<hex>" checksum (io::file_size_and_checksum). The bytes the direct path wrote are
  /// hashed from their memory while those writes finish; the rest is read from the page cache.
  /// Throws nnx::IOError for a failed write or fsync (before any hash error); nnx::Error as
  /// close() for writes it was not given.
  std::pair<int64_t, std::string> commit(io::PendingWrites pending = {});
  int64_t id() const { return id_; }
  const std::string& path() const { return path_; }
  /// Internal (the format's writer): the file's direct writer, created on first use; null when
  /// the file system refuses O_DIRECT or the file is not on HDF5's sec2 driver.
  std::shared_ptr<io::DirectWriter> direct_writer();
  /// Internal (the format's writer): bytes of the file that hold one large dataset's raw data.
  void note_raw_extent(int64_t offset, int64_t size) { raw_extents_.push_back({offset, size}); }
  /// After commit(): the file's structure checksum, {"checksum": "xxh3_64:<hex>", "skip":
  /// [[offset, size], ...]}: everything HDF5 parses (superblock, object headers, attributes,
  /// small datasets) without the raw data of large datasets, which carry checksums of their
  /// own (io::checksum_outside). Restores check it before HDF5 opens the file. Throws
  /// nnx::Error naming the file when it cannot be read.
  nlohmann::json structure() const;

 private:
  H5File(int64_t id, std::string path) : id_(id), path_(std::move(path)) {}
  // Flushes and closes the HDF5 file (not the direct writes); false when either failed.
  bool close_hdf5();
  // Throws unless `pending` holds this file's direct writes (when it has any).
  void check_pending(const io::PendingWrites& pending) const;
  int64_t id_ = -1;
  std::string path_;
  std::shared_ptr<io::DirectWriter> direct_;  // its own descriptors: its writes may outlive id_
  bool direct_tried_ = false;
  std::vector<io::ByteRange> raw_extents_;  // in the order the datasets were written
};

}  // namespace nnx::checkpoint
