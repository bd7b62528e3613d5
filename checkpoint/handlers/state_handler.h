// The "state" item kind: a State saved as HDF5 datasets (StandardSave / StandardRestore).
#pragma once

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
  /// One entry per tensor: kEveryRank for a sharded PartitionSpec (each rank holds and writes
  /// its shard; checkpoint.h5 stitches them into the global array), kGlobalFile for scalars and
  /// empty tensors, else kOneRank weighed by its bytes.
  std::vector<WriteRequest> plan_writes(const std::string& name, const ItemArgs& args) const override;
  /// The tensors this rank writes (ctx.plan): its kOneRank ones and its shard of kEveryRank ones.
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

}  // namespace nnx::checkpoint
