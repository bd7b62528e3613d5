// Maps PartitionSpecs and a Mesh onto the ranges of stored arrays that a restore reads.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "nnx/checkpoint/format/state_reader.h"
#include "nnx/framework/sharding.h"

namespace nnx::checkpoint {

/// The ReadPlanner of State restores: a template variable whose metadata holds a sharded
/// PartitionSpec reads rank `mesh.rank`'s shard of the stored global array along the spec's
/// dimension (shard_range, framework/sharding.h), any other reads the whole array; the restored
/// variable is annotated as the template says, whatever wrote the checkpoint.
class ShardPlanner : public ReadPlanner {
 public:
  /// `mesh`: this process's place on the 'data' mesh (rank 0 of 1 when unset).
  explicit ShardPlanner(std::optional<Mesh> mesh) : mesh_(mesh.value_or(Mesh{})) {}
  /// Throws nnx::Error naming `path` and `where`: a malformed PartitionSpec in the template, or
  /// a template shape that is not the stored shape (or, sharded, this rank's shard of it).
  std::optional<Range> plan(const std::string& path, const VariableState& templ, const std::vector<int64_t>& stored_shape,
                            const std::string& where) const override;
  /// `stored` with the template's sharding annotation (none for a replicated template).
  Metadata restored_metadata(const VariableState& templ, Metadata stored) const override;

 private:
  Mesh mesh_;
};

/// read_item_state with a ShardPlanner(options.mesh): the State restore of one item (what
/// StandardRestore reads). Throws as read_item_state.
State read_state(const H5File& file, const std::string& item, const State& templ, const ReadOptions& options = {});

}  // namespace nnx::checkpoint
