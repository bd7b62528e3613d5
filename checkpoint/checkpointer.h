// Checkpointers: atomic writes of one checkpoint directory (Orbax's Checkpointer layer).
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <memory>

#include "nnx/checkpoint/args.h"
#include "nnx/checkpoint/format/write_options.h"

namespace nnx::distributed {
class ProcessGroup;
}

namespace nnx::checkpoint {

class Coordinator;

/// Synchronous checkpointer (ocp.Checkpointer): each item is written by the handler registered
/// for its args type (handlers/registry.h) and the directory is committed by the commit
/// protocol (checkpoint/commit.h): save() writes <path>.tmp-<unique>/, fsyncs, writes
/// _CHECKPOINT_METADATA last, renames to <path> and fsyncs the parent. An existing <path> is
/// never overwritten (nnx::Error). A failed save removes its temporary directory.
class Checkpointer {
 public:
  Checkpointer() = default;
  virtual ~Checkpointer() = default;
  /// Saves the items of `args` (save args: StandardSave, JsonSave, or a registered kind's);
  /// `metadata` is merged into _CHECKPOINT_METADATA (e.g. step, metrics). Throws nnx::Error /
  /// nnx::IOError.
  virtual void save(const std::filesystem::path& path, const Composite& args,
                    const nlohmann::json& metadata = nlohmann::json::object());
  /// Restores the items of `args` (restore args; a subset of the saved items). With a process
  /// group of world_size > 1 it is collective (every rank calls it, with no save in flight):
  /// templates with a sharded PartitionSpec read this rank's shard, and a failure on any rank
  /// fails the restore on every rank (naming the first failing rank's error).
  Restored restore(const std::filesystem::path& path, const Composite& args) const;
  /// Options for the HDF5 writer (slab size, O_DIRECT).
  WriteOptions write_options;
  /// With a process group of world_size > 1, save() is collective: every rank calls it with
  /// the same (replicated) items; each tensor is written once, by a writer rank chosen
  /// deterministically and balanced by bytes (ItemHandler::plan_writes, WritePlan), into shard-<r>-of-<n>.h5; rank 0
  /// writes checkpoint.h5 with virtual datasets over the shards (global arrays), the metadata,
  /// and commits. A variable with a sharded PartitionSpec holds this rank's shard
  /// (framework/sharding.h): every rank writes its shard and checkpoint.h5 presents their
  /// concatenation (ZeRO-1 optimizer state). Every rank learns the outcome: a failure on any
  /// rank fails the save everywhere, and a rank that does not join makes the others fail
  /// within the group's timeout.
  std::shared_ptr<distributed::ProcessGroup> process_group;

 private:
  std::unique_ptr<Coordinator> coordinator() const;
  int64_t save_seq_ = 0;
  mutable int64_t restore_seq_ = 0;
};

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

}  // namespace nnx::checkpoint
