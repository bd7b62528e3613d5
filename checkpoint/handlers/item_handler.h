// The interface of one item kind's handler (Orbax's CheckpointHandler): save, restore, describe.
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "nnx/checkpoint/args.h"
#include "nnx/checkpoint/format/h5_file.h"
#include "nnx/checkpoint/format/state_writer.h"
#include "nnx/checkpoint/handlers/write_plan.h"
#include "nnx/checkpoint/io/host_snapshot.h"
#include "nnx/checkpoint/io/pending_writes.h"
#include "nnx/framework/sharding.h"

namespace nnx::checkpoint {

/// Where an item is being written. A single-rank save calls ItemHandler::save with `file` =
/// checkpoint.h5. A save by world_size > 1 ranks calls save_shard on every rank with `file` =
/// that rank's shard-<r>-of-<n>.h5, then save_global on rank 0 with `file` = checkpoint.h5 and
/// `shards` = every rank's shard file (committed, open read-only).
struct SaveContext {
  H5File& file;
  const WriteOptions& options;
  int rank = 0;
  int world_size = 1;
  /// The writer of each entry every handler listed (ItemHandler::plan_writes), balanced over
  /// the ranks. Empty for a single-rank save.
  const WritePlan& plan;
  /// save_global only: the ranks' shard files, in rank order (rank r's is named
  /// shard_file_name(r, world_size)).
  const std::vector<H5File>* shards = nullptr;
};

/// Where an item is being read from.
struct RestoreContext {
  const H5File& file;                      ///< checkpoint.h5, verified (open_verified)
  const nlohmann::json& metadata;          ///< _CHECKPOINT_METADATA
  std::optional<Mesh> mesh;                ///< this process's place on the 'data' mesh
};

/// One item kind: how its args are written into a checkpoint's HDF5 files and read back.
/// Registered by its save and restore args types (handlers/registry.h). Handlers are stateless
/// and called from any thread.
class ItemHandler {
 public:
  virtual ~ItemHandler() = default;
  /// The kind _CHECKPOINT_METADATA's "items" records ([A-Za-z0-9_.-]{1,64}); a restore finds
  /// the handler of a stored item by it.
  virtual std::string kind() const = 0;
  /// Single-rank save: writes the item named `name` (save args `args`) into ctx.file. Returns
  /// the writes still in flight. Throws nnx::Error / nnx::IOError naming the file and item.
  virtual io::PendingWrites save(const SaveContext& ctx, const std::string& name, const ItemArgs& args) const = 0;
  /// Multi-rank save: the entries this item writes into the ranks' shard files, each with its
  /// placement and bytes. The Checkpointer balances every item's kOneRank entries over the
  /// ranks and hands the result to save_shard and save_global as ctx.plan. Called on every
  /// rank with the same args; must list the same entries on every rank. Default: none (the item
  /// is written whole by rank 0's save_global).
  virtual std::vector<WriteRequest> plan_writes(const std::string& name, const ItemArgs& args) const;
  /// Multi-rank save, every rank: this rank's share (ctx.plan.at(name, path).writes_shard(rank))
  /// into its shard file. Default: nothing.
  virtual io::PendingWrites save_shard(const SaveContext& ctx, const std::string& name, const ItemArgs& args) const;
  /// Multi-rank save, rank 0: the item in checkpoint.h5, over the shards. Default: save().
  virtual io::PendingWrites save_global(const SaveContext& ctx, const std::string& name, const ItemArgs& args) const;
  /// Restores the item named `name` (restore args `args`) into `out`. Throws nnx::Error naming
  /// the file, the item and what does not match.
  virtual void restore(const RestoreContext& ctx, const std::string& name, const ItemArgs& args, Restored& out) const = 0;
  /// Describes the stored item for tools (nnx-ckpt show): a JSON value of the handler's choice.
  virtual nlohmann::json describe(const H5File& file, const std::string& name) const = 0;
  /// Bytes of tensor data the save args hold (Composite::nbytes). Default 0.
  virtual int64_t nbytes(const ItemArgs& args) const;
  /// Save args whose tensors are host copies made with `snapshot` (an asynchronous save: the
  /// caller may change its tensors once the snapshot finished). Default: `args` itself (values
  /// that share no memory with the caller).
  virtual ItemArgs snapshot(const ItemArgs& args, const std::string& name, io::HostSnapshot& snapshot) const;
};

}  // namespace nnx::checkpoint
