// The "state" item kind: a State saved as HDF5 datasets (StandardSave / StandardRestore).
#pragma once

#include <map>
#include <string>

#include "nnx/checkpoint/handlers/item_handler.h"

namespace nnx::checkpoint {

/// Saves a StandardSave's State with write_state (one rank) or as each rank's share plus
/// virtual datasets over the shards (several ranks); restores a StandardRestore against its
/// template with read_state (checkpoint/shard_planner.h: a sharded template reads its shard).
class StateHandler : public ItemHandler {
 public:
  std::string kind() const override;
  io::PendingWrites save(const SaveContext& ctx, const std::string& name, const ItemArgs& args) const override;
  /// The tensors whose writer (ctx.writers) is this rank or every rank.
  io::PendingWrites save_shard(const SaveContext& ctx, const std::string& name, const ItemArgs& args) const override;
  /// Virtual datasets over the shards' datasets: one piece for a replicated tensor (its
  /// writer's), a piece per rank for a sharded one, stitched along its sharded dimension.
  io::PendingWrites save_global(const SaveContext& ctx, const std::string& name, const ItemArgs& args) const override;
  void restore(const RestoreContext& ctx, const std::string& name, const ItemArgs& args, Restored& out) const override;
  /// {"datasets": [{"path", "kind", "dtype", "shape", "sharding", "checksum", "nbytes"}, ...]}.
  nlohmann::json describe(const H5File& file, const std::string& name) const override;
  int64_t nbytes(const ItemArgs& args) const override;
  /// Every tensor copied to host memory (io::HostSnapshot).
  ItemArgs snapshot(const ItemArgs& args, const std::string& name, io::HostSnapshot& snapshot) const override;
};

/// assign_writers' value for a sharded variable: every rank writes its own shard.
inline constexpr int kEveryRank = -2;

/// The writer rank of each StandardSave tensor ("item/path" -> rank): tensors sorted by bytes
/// (descending, then name) go to the least-loaded rank. Scalars and empty tensors get -1: rank 0
/// writes them straight into checkpoint.h5. Variables whose metadata holds a sharded
/// PartitionSpec get kEveryRank: each rank holds and writes its shard, and checkpoint.h5 stitches
/// the shards into the global array.
std::map<std::string, int> assign_writers(const Composite& args, int world_size);

}  // namespace nnx::checkpoint
