// Collectives over tensors split along dim 0 in shard_range's layout (numpy.array_split; see
// framework/sharding.h): ZeRO-1's and ZeRO-3's parameter all-gather, ZeRO-3's gradient
// reduce-scatter. Each packs one buffer per dtype in which every rank's piece is the largest
// rank's share (padded), so that uneven shards travel as one c10d collective.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <vector>

namespace nnx::distributed {

class ProcessGroup;

/// all_gather_shards started and not waited for (all_gather_shards_async).
class PendingShardGather {
 public:
  /// Waits for the gather and writes every other rank's rows into the tensors. Throws
  /// nnx::IOError naming the rank when a rank failed or is missing (within the group's timeout).
  /// A second wait() does nothing.
  void wait();

 private:
  friend PendingShardGather all_gather_shards_async(const std::vector<at::Tensor>&, ProcessGroup&);
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

/// The parameter all-gather: each tensor (dim >= 1) is split along dim 0 as
/// shard_range(size(0), rank, world_size); on entry each rank holds current values in its own
/// rows, once wait() returns every rank holds every rank's rows. This rank's rows are packed
/// when it is called (later writes to them do not travel); the other rows are written at wait().
/// One c10d allgather per dtype. Throws nnx::Error for a 0-d tensor.
PendingShardGather all_gather_shards_async(const std::vector<at::Tensor>& tensors, ProcessGroup& pg);

/// all_gather_shards_async(tensors, pg).wait().
void all_gather_shards(const std::vector<at::Tensor>& tensors, ProcessGroup& pg);

/// The gradient reduce-scatter: for each full tensor (dim >= 1, same shape on every rank), this
/// rank's rows (shard_range(size(0), rank, world_size)) of its mean over ranks, as new tensors.
/// One c10d reduce-scatter per dtype (ProcessGroup::reduce_scatter_sum), then a scale by
/// 1/world_size; bfloat16 is summed in float32 and rounded once. Throws nnx::Error for a 0-d
/// tensor, nnx::IOError on a collective failure.
std::vector<at::Tensor> reduce_scatter_mean(const std::vector<at::Tensor>& full, ProcessGroup& pg);

}  // namespace nnx::distributed
