#include "nnx/framework/sharding.h"

#include <unordered_map>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "nnx/framework/error.h"

namespace nnx {

void Mesh::validate() const {
  NNX_CHECK(size >= 1 && rank >= 0 && rank < size, "invalid mesh position: rank ", rank, " of ", size);
}

PartitionSpec::PartitionSpec(std::vector<std::optional<std::string>> axes) : axes_(std::move(axes)) {
  for (size_t d = 0; d < axes_.size(); ++d) {
    if (!axes_[d]) continue;
    NNX_CHECK(*axes_[d] == kDataAxis, "PartitionSpec: unknown mesh axis '", *axes_[d], "' at dimension ", d,
              " (the mesh has one axis, '", kDataAxis, "')");
    NNX_CHECK(dim_ < 0, "PartitionSpec: dimensions ", dim_, " and ", d, " are both sharded along '", kDataAxis,
              "'; a one-axis mesh shards at most one dimension");
    dim_ = static_cast<int64_t>(d);
  }
}

PartitionSpec PartitionSpec::sharded(int64_t dim, int64_t ndim) {
  NNX_CHECK(dim >= 0 && dim < ndim, "PartitionSpec: cannot shard dimension ", dim, " of a ", ndim, "-d tensor");
  std::vector<std::optional<std::string>> axes(static_cast<size_t>(ndim));
  axes[static_cast<size_t>(dim)] = kDataAxis;
  return PartitionSpec(std::move(axes));
}

PartitionSpec PartitionSpec::parse(const std::string& text) {
  if (text.empty()) return {};
  auto j = nlohmann::json::parse(text, nullptr, false);
  NNX_CHECK(!j.is_discarded() && j.is_array(), "malformed sharding '", text,
            "': expected a JSON array with one entry per dimension, e.g. [\"data\",null]");
  std::vector<std::optional<std::string>> axes;
  for (const auto& e : j) {
    NNX_CHECK(e.is_null() || e.is_string(), "malformed sharding '", text, "': entries are null or \"", kDataAxis, "\"");
    axes.push_back(e.is_null() ? std::nullopt : std::optional<std::string>(e.get<std::string>()));
  }
  return PartitionSpec(std::move(axes));
}

std::string PartitionSpec::to_string() const {
  if (replicated()) return "";
  nlohmann::json j = nlohmann::json::array();
  for (const auto& a : axes_) j.push_back(a ? nlohmann::json(*a) : nlohmann::json(nullptr));
  return j.dump();
}

void PartitionSpec::check_rank(int64_t ndim, const std::string& where) const {
  NNX_CHECK(replicated() || static_cast<int64_t>(axes_.size()) == ndim, where, ": sharding ", to_string(), " has ",
            axes_.size(), " entries, the tensor has ", ndim, " dimensions");
}

PartitionSpec get_partition_spec(const Metadata& metadata) {
  auto it = metadata.find(kShardingKey);
  if (it == metadata.end() || it->second.empty()) return PartitionSpec();
  // Metadata stays a string map (it is saved as the dataset's JSON attributes); each distinct
  // text is parsed once per thread, so queries on hot paths (restore planning, the optimizer)
  // parse no JSON. Bad text throws every time and is not cached.
  thread_local std::unordered_map<std::string, PartitionSpec> parsed;
  if (auto c = parsed.find(it->second); c != parsed.end()) return c->second;
  PartitionSpec spec = PartitionSpec::parse(it->second);
  if (parsed.size() < 4096) parsed.emplace(it->second, spec);
  return spec;
}

std::vector<std::pair<std::string, PartitionSpec>> get_partition_spec(const State& state) {
  std::vector<std::pair<std::string, PartitionSpec>> out;
  for (const auto& [path, vs] : state) {
    try {
      out.emplace_back(path, get_partition_spec(vs.metadata));
    } catch (const Error& e) {
      NNX_CHECK(false, "variable '", path, "': ", e.what());
    }
  }
  return out;
}

void set_partition_spec(Variable& variable, const PartitionSpec& spec) {
  spec.check_rank(variable.value().dim(), "set_partition_spec");
  if (spec.replicated()) {
    variable.metadata().erase(kShardingKey);
  } else {
    variable.metadata()[kShardingKey] = spec.to_string();
  }
}

ShardRange shard_range(int64_t extent, int rank, int count) {
  NNX_CHECK(extent >= 0, "shard_range: negative extent ", extent);
  NNX_CHECK(count >= 1 && rank >= 0 && rank < count, "shard_range: rank ", rank, " of ", count);
  const int64_t base = extent / count, extra = extent % count;
  ShardRange r;
  r.size = base + (rank < extra ? 1 : 0);
  r.start = rank * base + std::min<int64_t>(rank, extra);
  return r;
}

std::vector<int64_t> shard_shape(const std::vector<int64_t>& global_shape, const PartitionSpec& spec, const Mesh& mesh) {
  if (spec.replicated()) return global_shape;
  spec.check_rank(static_cast<int64_t>(global_shape.size()), "shard_shape");
  std::vector<int64_t> s = global_shape;
  auto d = static_cast<size_t>(spec.sharded_dim());
  s[d] = shard_range(s[d], mesh.rank, mesh.size).size;
  return s;
}

at::Tensor shard_of(const at::Tensor& global, const PartitionSpec& spec, const Mesh& mesh) {
  if (spec.replicated()) return global;
  spec.check_rank(global.dim(), "shard_of");
  auto r = shard_range(global.size(spec.sharded_dim()), mesh.rank, mesh.size);
  return global.narrow(spec.sharded_dim(), r.start, r.size);
}

}  // namespace nnx
