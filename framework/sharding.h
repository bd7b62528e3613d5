// Sharding annotations over the one-axis 'data' mesh (jax.sharding.PartitionSpec as Flax NNX
// attaches it to Variables), and the layout of a sharded dimension across ranks.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "nnx/framework/state.h"
#include "nnx/framework/variable.h"

namespace nnx {

/// Name of the only mesh axis: the data-parallel ranks (jax.sharding.Mesh(devices, ('data',))).
inline constexpr const char* kDataAxis = "data";
/// Metadata key under which a Variable keeps its PartitionSpec.
inline constexpr const char* kShardingKey = "sharding";

/// This process's position on the 'data' mesh: rank `rank` of `size` ranks.
struct Mesh {
  int rank = 0;
  int size = 1;
  /// Throws nnx::Error unless 0 <= rank < size.
  void validate() const;
};

/// One entry per tensor dimension: the mesh axis that dimension is split along, or none
/// (jax.sharding.PartitionSpec restricted to the one-axis 'data' mesh, so at most one dimension
/// is sharded). The default spec is replicated: every rank holds the whole tensor.
/// In metadata it is written as JSON, one entry per dimension: `["data",null]` shards dim 0 of
/// a matrix; `""` (or no key) means replicated.
class PartitionSpec {
 public:
  /// Replicated.
  PartitionSpec() = default;
  /// `axes[d]` is "data" or std::nullopt. Throws nnx::Error for another axis name or for more
  /// than one sharded dimension.
  explicit PartitionSpec(std::vector<std::optional<std::string>> axes);
  /// A spec for a tensor of `ndim` dimensions sharded along `dim` (0 <= dim < ndim; throws otherwise).
  static PartitionSpec sharded(int64_t dim, int64_t ndim);
  /// Parses the metadata form (see above). Throws nnx::Error quoting `text`.
  static PartitionSpec parse(const std::string& text);

  /// True when no dimension is sharded.
  bool replicated() const { return dim_ < 0; }
  /// The sharded dimension, or -1 when replicated.
  int64_t sharded_dim() const { return dim_; }
  const std::vector<std::optional<std::string>>& axes() const { return axes_; }
  /// The metadata form: JSON as above, "" when replicated.
  std::string to_string() const;
  /// Throws nnx::Error naming `where` when a sharded spec has a different number of entries
  /// than the tensor has dimensions.
  void check_rank(int64_t ndim, const std::string& where) const;

  bool operator==(const PartitionSpec& o) const { return dim_ == o.dim_ && (replicated() || axes_ == o.axes_); }
  bool operator!=(const PartitionSpec& o) const { return !(*this == o); }

 private:
  std::vector<std::optional<std::string>> axes_;
  int64_t dim_ = -1;
};

/// The spec in `metadata` (replicated when the key is absent). Throws nnx::Error when malformed.
PartitionSpec get_partition_spec(const Metadata& metadata);
/// nnx.get_partition_spec: (path, spec) of every variable of `state`, in state order.
std::vector<std::pair<std::string, PartitionSpec>> get_partition_spec(const State& state);
/// Writes `spec` into the variable's metadata (removes the key when replicated). Throws
/// nnx::Error when the spec's rank differs from the tensor's.
void set_partition_spec(Variable& variable, const PartitionSpec& spec);

/// Rows [start, start + size) of a dimension of `extent` elements held by `rank` of `count`
/// (numpy.array_split's layout: the first extent % count ranks hold one element more).
struct ShardRange {
  int64_t start = 0;
  int64_t size = 0;
};
/// Throws nnx::Error when extent < 0 or rank is not in [0, count).
ShardRange shard_range(int64_t extent, int rank, int count);
/// The shape `mesh.rank` holds of a global array of `global_shape` under `spec`.
std::vector<int64_t> shard_shape(const std::vector<int64_t>& global_shape, const PartitionSpec& spec, const Mesh& mesh);
/// This rank's shard of `global` under `spec`: a view (narrow) along the sharded dimension, or
/// `global` itself when replicated.
at::Tensor shard_of(const at::Tensor& global, const PartitionSpec& spec, const Mesh& mesh);

}  // namespace nnx
