// Checkpointers: atomic writes of one checkpoint directory (Orbax's Checkpointer layer).
#pragma once

#include <nlohmann/json.hpp>

#include <exception>
#include <filesystem>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "checkpoint/args.h"

namespace nnx::distributed {
class ProcessGroup;
}

namespace nnx::checkpoint {

/// Name of the composite HDF5 file inside a checkpoint directory.
inline constexpr const char* kCheckpointFile = "checkpoint.h5";
/// Name of the metadata file, written last: its presence marks a complete checkpoint.
inline constexpr const char* kMetadataFile = "_CHECKPOINT_METADATA";

/// Reads and validates <directory>/_CHECKPOINT_METADATA: format version (an unknown version is
/// an error naming it), sizes of the files it lists. Throws nnx::Error naming the file.
nlohmann::json read_metadata(const std::filesystem::path& directory);

class H5File;

/// Checks each file `meta` (read_metadata(directory)) lists before anything parses it: its
/// structure checksum (H5File::structure(): HDF5's metadata and small datasets) where the
/// metadata has one, else, for checkpoints written before it existed, the whole file's
/// checksum. Then opens <directory>/checkpoint.h5 read-only. Throws nnx::Error naming the file
/// and both checksums: a file that fails is never handed to HDF5's parser.
H5File open_verified(const std::filesystem::path& directory, const nlohmann::json& meta);

/// Result of verify().
struct VerifyReport {
  bool ok = true;
  std::vector<std::string> problems;  ///< one line per failure: file, dataset, expected vs found
  int64_t datasets_checked = 0;
  int64_t bytes_checked = 0;
};
/// Checks a committed checkpoint: metadata, each file's size and checksum, every dataset's
/// checksum, and flags floating-point datasets holding NaN or Inf. Never throws for corruption;
/// reports it.
VerifyReport verify(const std::filesystem::path& directory);

/// Synchronous checkpointer (ocp.Checkpointer): save() writes <path>.tmp-<unique>/, fsyncs,
/// writes _CHECKPOINT_METADATA last, renames to <path> and fsyncs the parent. An existing <path>
/// is never overwritten (nnx::Error). A failed save removes its temporary directory.
class Checkpointer {
 public:
  Checkpointer() = default;
  virtual ~Checkpointer() = default;
  /// Saves the StandardSave/JsonSave items of `args`; `metadata` is merged into
  /// _CHECKPOINT_METADATA (e.g. step, metrics). Throws nnx::Error / nnx::IOError.
  virtual void save(const std::filesystem::path& path, const Composite& args,
                    const nlohmann::json& metadata = nlohmann::json::object());
  /// Restores the StandardRestore/JsonRestore items of `args` (a subset of the saved items).
  /// With a process group of world_size > 1 it is collective (every rank calls it, with no save
  /// in flight): templates with a sharded PartitionSpec read this rank's shard, and a failure on
  /// any rank fails the restore on every rank (naming the first failing rank's error).
  Restored restore(const std::filesystem::path& path, const Composite& args) const;
  /// Options for the HDF5 writer (slab size).
  WriteOptions write_options;
  /// With a process group of world_size > 1, save() is collective: every rank calls it with
  /// the same (replicated) items; each tensor is written once, by a writer rank chosen
  /// deterministically and balanced by bytes, into shard-<r>-of-<n>.h5; rank 0 writes
  /// checkpoint.h5 with virtual datasets over the shards (global arrays), the metadata, and
  /// commits. A variable with a sharded PartitionSpec holds this rank's shard (framework/sharding.h):
  /// every rank writes its shard and checkpoint.h5 presents their concatenation (ZeRO-1 optimizer
  /// state). Every rank learns the outcome: a failure on any rank fails the save everywhere,
  /// and a rank that does not join makes the others fail within the group's timeout.
  std::shared_ptr<distributed::ProcessGroup> process_group;

 private:
  void save_distributed(const std::filesystem::path& path, const Composite& args, const nlohmann::json& metadata);
  int64_t save_seq_ = 0;
  mutable int64_t restore_seq_ = 0;
};

/// assign_writers' value for a sharded variable: every rank writes its own shard.
inline constexpr int kEveryRank = -2;

/// The writer rank of each StandardSave tensor ("item/path" -> rank): tensors sorted by bytes
/// (descending, then name) go to the least-loaded rank. Scalars and empty tensors get -1: rank 0
/// writes them straight into checkpoint.h5. Variables whose metadata holds a sharded
/// PartitionSpec get kEveryRank: each rank holds and writes its shard, and checkpoint.h5 stitches
/// the shards into the global array.
std::map<std::string, int> assign_writers(const Composite& args, int world_size);

/// Saves and restores one State without a manager (ocp.StandardCheckpointer).
class StandardCheckpointer {
 public:
  /// Writes `state` as item "state" of a new checkpoint at `path`.
  void save(const std::filesystem::path& path, const State& state);
  /// Restores against `templ` (see StandardRestore).
  State restore(const std::filesystem::path& path, const State& templ, ReadOptions options = {}) const;

 private:
  Checkpointer checkpointer_;
};

/// Asynchronous checkpointer (ocp.AsyncCheckpointer): save() copies every tensor to host memory
/// (the caller may change its tensors as soon as save() returns), then writes and commits on a
/// background thread. One save is in flight at a time: save() first waits for the previous one.
/// A failed background save is rethrown by the next save() or wait_until_finished(): by every
/// wait_until_finished() that was waiting for it, on any thread, and by the first one after it.
/// save() is called from one thread at a time; wait_until_finished(), wait() and in_progress()
/// from any.
class AsyncCheckpointer : public Checkpointer {
 public:
  AsyncCheckpointer() = default;
  /// Waits for the save in flight; errors are swallowed here (call wait_until_finished first).
  ~AsyncCheckpointer() override;
  void save(const std::filesystem::path& path, const Composite& args,
            const nlohmann::json& metadata = nlohmann::json::object()) override;
  /// Like save(); `on_commit` runs on the background thread after the commit succeeded, and
  /// `on_failure` (with the error) when the save failed; waiters return after either.
  void save_async(const std::filesystem::path& path, const Composite& args, const nlohmann::json& metadata,
                  std::function<void()> on_commit, std::function<void(std::exception_ptr)> on_failure = nullptr);
  /// Blocks until no save is in flight; rethrows a background failure (see the class comment).
  void wait_until_finished();
  /// Blocks until no save is in flight; never throws, reports nothing (a failure stays for
  /// wait_until_finished()).
  void wait() const;
  bool in_progress() const;

 private:
  struct Flight {
    std::shared_future<void> done;  // ready when the save committed or failed
    uint64_t id = 0;
  };
  Flight current() const;
  std::thread worker_;  // joined only by save_async and the destructor (one thread)
  Flight flight_;       // done invalid: nothing in flight and no failure left to report
  uint64_t next_id_ = 0;
  std::vector<at::Tensor> buffers_;  // the last snapshot's host buffers, reused by the next
  mutable std::mutex mu_;
};

/// Copies the tensors of every StandardSave item to contiguous host memory (an async snapshot).
/// Buffers from `reuse` (a previous snapshot's, in order) are reused where dtype and size match,
/// which saves the page faults of fresh allocations.
Composite snapshot_to_host(const Composite& args, std::vector<at::Tensor>* reuse = nullptr);

}  // namespace nnx::checkpoint
