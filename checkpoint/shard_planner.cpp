#include "nnx/checkpoint/shard_planner.h"

#include "nnx/framework/error.h"

namespace nnx::checkpoint {

namespace {
PartitionSpec template_spec(const std::string& path, const VariableState& templ, const std::string& where) {
  try {
    PartitionSpec spec = get_partition_spec(templ.metadata);
    spec.check_rank(templ.value.dim(), "template");
    return spec;
  } catch (const Error& e) {
    NNX_CHECK(false, "template '", path, "' (", where, "): ", e.what());
  }
  return {};
}
}  // namespace

std::optional<Range> ShardPlanner::plan(const std::string& path, const VariableState& templ,
                                        const std::vector<int64_t>& stored, const std::string& where) const {
  const PartitionSpec spec = template_spec(path, templ, where);
  const auto templ_shape = templ.value.sizes().vec();
  if (spec.replicated()) {
    NNX_CHECK(stored == templ_shape, "shape mismatch at '", path, "': checkpoint ", format_shape(stored), ", template ",
              format_shape(templ_shape), " (", where, ")");
    return std::nullopt;
  }
  NNX_CHECK(templ.value.dim() == static_cast<int64_t>(stored.size()), "shape mismatch at '", path, "': checkpoint ",
            format_shape(stored), ", template ", format_shape(templ_shape), " (", where, ")");
  const int64_t dim = spec.sharded_dim();
  const auto r = shard_range(stored[static_cast<size_t>(dim)], mesh_.rank, mesh_.size);
  const auto want = shard_shape(stored, spec, mesh_);
  NNX_CHECK(want == templ_shape, "shape mismatch at '", path, "': checkpoint ", format_shape(stored), ", whose shard ",
            mesh_.rank, " of ", mesh_.size, " along dim ", dim, " is ", format_shape(want), ", template ",
            format_shape(templ_shape), " (", where, ")");
  return Range{dim, r.start, r.size};
}

Metadata ShardPlanner::restored_metadata(const VariableState& templ, Metadata stored) const {
  const PartitionSpec spec = get_partition_spec(templ.metadata);  // valid: plan() checked it
  if (spec.replicated()) stored.erase(kShardingKey);
  else stored[kShardingKey] = spec.to_string();
  return stored;
}

State read_state(const H5File& file, const std::string& item, const State& templ, const ReadOptions& options) {
  return read_item_state(file, item, templ, options, ShardPlanner(options.mesh));
}

}  // namespace nnx::checkpoint
