// State <-> HDF5 group (the per-item handler) and JSON items, on HDF5's C API.
#pragma once

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "checkpoint/fs.h"
#include "checkpoint/metadata.h"
#include "framework/dtype.h"
#include "framework/filter.h"
#include "framework/sharding.h"
#include "framework/state.h"

namespace nnx::checkpoint {

class DirectWriter;

/// An open HDF5 file (RAII). Errors name the file.
class H5File {
 public:
  /// Creates `path` (must not exist) for writing; throws nnx::IOError naming it on failure.
  static H5File create(const std::string& path);
  /// Opens `path` read-only; throws nnx::Error naming it when it is missing or not HDF5.
  static H5File open(const std::string& path);
  H5File(H5File&& o) noexcept;
  H5File& operator=(H5File&& o) noexcept;
  ~H5File();
  /// Flushes and closes, then waits for the writes of large datasets (WriteOptions::direct_io);
  /// throws nnx::IOError naming the file (and the dataset of a failed write) on failure.
  void close();
  /// The commit protocol's end of a written file: close(), fsync, and its size and
  /// "xxh3_64:<hex>" checksum (fs::file_size_and_checksum). The bytes the direct path wrote are
  /// hashed from their memory while those writes finish; the rest is read from the page cache.
  /// Throws nnx::IOError for a failed write or fsync (before any hash error).
  std::pair<int64_t, std::string> commit();
  int64_t id() const { return id_; }
  const std::string& path() const { return path_; }
  /// Internal (the writer of large datasets): created on first use; null when the file system
  /// refuses O_DIRECT or the file is not on HDF5's sec2 driver.
  DirectWriter* direct_writer();
  /// Internal (the writer): bytes of the file that hold one large dataset's raw data only.
  void note_raw_extent(int64_t offset, int64_t size) { raw_extents_.push_back({offset, size}); }
  /// After commit(): the file's structure checksum, {"checksum": "xxh3_64:<hex>", "skip":
  /// [[offset, size], ...]}: everything HDF5 parses (superblock, object headers, attributes,
  /// small datasets) without the raw data of large datasets, which carry checksums of their
  /// own (fs::checksum_outside). Restores check it before HDF5 opens the file. Throws
  /// nnx::Error naming the file when it cannot be read.
  nlohmann::json structure() const;

 private:
  H5File(int64_t id, std::string path) : id_(id), path_(std::move(path)) {}
  // Flushes and closes the HDF5 file (not the direct writes); false when either failed.
  bool close_hdf5();
  int64_t id_ = -1;
  std::string path_;
  std::shared_ptr<DirectWriter> direct_;  // its own descriptors: its writes may outlive id_
  bool direct_tried_ = false;
  std::vector<fs::ByteRange> raw_extents_;  // in the order the datasets were written
};

/// How write_state wrote the tensor datasets (filled in when WriteOptions::stats points here).
struct WriteStats {
  /// Datasets of 1 MiB or more whose bytes went to the file with O_DIRECT writes on writer threads.
  int64_t direct_writes = 0;
  /// Datasets written through H5Dwrite (small ones, or all with direct_io off or refused).
  int64_t hdf5_writes = 0;
  /// Bytes written by both, in bytes.
  int64_t bytes = 0;
};

/// Options of write_state.
struct WriteOptions {
  /// Largest single H5Dwrite, in bytes; bigger tensors are written in slabs along dim 0
  /// (so tensors over 4 GiB never need one huge I/O call).
  int64_t max_write_bytes = int64_t(1) << 30;
  /// Datasets of 1 MiB or more whose tensor is contiguous CPU memory get their file space when
  /// they are created (contiguous, 4 KiB aligned) and their bytes are written there with
  /// O_DIRECT on 4 writer threads, bypassing the page cache (memory not 4 KiB aligned is
  /// copied through page-aligned 4 MiB staging buffers; the last partial page goes through the
  /// page cache). Temporaries (a CUDA tensor's host copy, a view made contiguous) go through
  /// H5Dwrite, so a save never holds a host copy of the whole state. The stored bytes and the
  /// format are the same either way. Where the file system refuses O_DIRECT (at open, or with
  /// EINVAL on a write), the same bytes go through the page cache. Off: every dataset through
  /// H5Dwrite.
  bool direct_io = true;
  /// When set, write_state adds how it wrote each dataset here (not thread-safe: one writer).
  WriteStats* stats = nullptr;
};

/// Writes every tensor of `state` as a dataset /<item>/<path> with attributes nnx_kind, dtype
/// (logical: bfloat16 is stored as uint16, bool as uint8), shape, sharding, metadata (JSON) and
/// checksum ("xxh3_64:<16 hex digits>" of the stored bytes, C order, little-endian). CUDA tensors
/// are copied to the host, views written as their elements only. Throws nnx::IOError naming the
/// file and dataset on failure. With WriteOptions::direct_io, the bytes of large datasets may
/// still be on their way when this returns: their tensors must not change until the file's
/// close() or commit(), which report a failed write (an H5File destroyed without either drops
/// the writes, as a failed save does).
void write_state(H5File& file, const std::string& item, const State& state,
                 const WriteOptions& options = {});

/// Where a virtual dataset's bytes live: one piece per writing rank, each a dataset at the same
/// /<item>/<path> in another file (relative to the referring file's directory).
struct VirtualSource {
  struct Piece {
    std::string file;
    std::string checksum;         ///< the piece dataset's checksum attribute
    std::vector<int64_t> shape;   ///< the piece's shape
  };
  /// One piece: the whole array (a replicated tensor written by one rank). Several pieces:
  /// the ranks' shards in rank order, concatenated along `dim` into the global array.
  std::vector<Piece> pieces;
  int64_t dim = -1;
};

/// Like write_state, but every path in `sources` becomes an HDF5 virtual dataset over the same
/// dataset in other files (the ranks' shard files), so this file presents the global arrays;
/// paths not in `sources` are written here. Attributes are the same as write_state's, with the
/// global shape. A dataset stitched from several pieces has an empty `checksum` and a `pieces`
/// attribute: JSON {"dim": d, "pieces": [{"file", "start", "size", "checksum"}, ...]} (pieces
/// of size 0 omitted). Throws nnx::Error when the pieces' other dimensions disagree.
void write_state_virtual(H5File& file, const std::string& item, const State& state,
                         const std::map<std::string, VirtualSource>& sources, const WriteOptions& options = {});

/// How read_state read the tensor datasets (filled in when ReadOptions::stats points here).
struct ReadStats {
  /// Datasets of 1 MiB or more stored contiguously in exactly the memory type (and pieces of
  /// such virtual datasets, one count per piece): read with pread() at their file offset on
  /// reader threads.
  int64_t direct_reads = 0;
  /// Datasets read through H5Dread (small, stitched, a shard's hyperslab, chunked, another
  /// byte order, ...).
  int64_t hdf5_reads = 0;
  /// Bytes read by both, in bytes.
  int64_t bytes = 0;
};

/// Options of read_state.
struct ReadOptions {
  /// Only template paths matching this filter are read (partial restore).
  Filter filter = Everything();
  /// Cast to the template's dtype when the stored dtype differs (else a mismatch is an error).
  bool cast = false;
  /// Allow the file to hold paths the template lacks (they are ignored).
  bool allow_extra = false;
  /// Target device; default: the template tensor's device (CPU for meta templates).
  std::optional<c10::Device> device;
  /// Verify each dataset's checksum (default on).
  bool verify_checksums = true;
  /// Where this process sits on the 'data' mesh. A template variable whose metadata holds a
  /// sharded PartitionSpec (framework/sharding.h) is read as this rank's shard of the stored
  /// global array: its template shape must be that shard's shape. Checkpointer::restore with a
  /// process group sets it from the group when it is unset; unset elsewhere means rank 0 of 1.
  std::optional<Mesh> mesh;
  /// When set, read_state adds how it read each dataset here (not thread-safe: one reader).
  ReadStats* stats = nullptr;
};

/// Reads /<item> validated against `templ` (an abstract State from eval_shape, or a real one):
/// a missing path, an unexpected path, a shape or dtype mismatch, a bad checksum is an nnx::Error
/// naming the file, the path and both values. Returns a State in the template's order with the
/// stored kinds and metadata.
State read_state(const H5File& file, const std::string& item, const State& templ,
                 const ReadOptions& options = {});

/// Reads every dataset under /<item> without a template (tools, conversions).
State read_state_untemplated(const H5File& file, const std::string& item, bool verify_checksums = true);

/// One dataset's description, for tools.
struct DatasetInfo {
  std::string path;  ///< path inside the item
  std::string kind;
  std::string dtype;
  std::vector<int64_t> shape;
  std::string sharding;
  std::string checksum;
  int64_t nbytes = 0;
};
/// Lists the datasets under /<item> in file order. Throws nnx::Error when the item is absent.
std::vector<DatasetInfo> list_item(const H5File& file, const std::string& item);
/// Names of the top-level items (groups other than "json") and JSON items.
std::vector<std::string> list_items(const H5File& file);
std::vector<std::string> list_json_items(const H5File& file);

/// Stores `value` as a UTF-8 string dataset /json/<item>.
void write_json(H5File& file, const std::string& item, const nlohmann::json& value);
/// Reads /json/<item>; throws nnx::Error naming the file and item when absent or not JSON.
nlohmann::json read_json(const H5File& file, const std::string& item);

/// The `dtype` attribute's names (framework/dtype.h).
using nnx::dtype_from_name;
using nnx::dtype_name;

/// "xxh3_64:<16 hex digits>" of `n` bytes.
std::string checksum_bytes(const void* data, size_t n);
/// The same text for a 64-bit XXH3 value computed elsewhere (streaming over a file or slices).
std::string format_checksum(uint64_t xxh3_64);

}  // namespace nnx::checkpoint
