// Fully sharded data parallel (ZeRO-3, PyTorch's FSDP2 fully_shard): every rank holds its rows of
// each param, gathers a unit's params just before the unit runs and frees them after.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <vector>

namespace nnx {
class Module;
}

namespace nnx::distributed {

class ProcessGroup;

/// Options of FullyShardedModel.
struct FullyShardOptions {
  /// The paths of the modules whose params are gathered together (units), e.g. "blocks/0".
  /// Empty: every direct child of the root, with Sequential / ModuleList / ModuleDict children
  /// replaced by their elements (each GPT block, each layer of an MLP's stack), except
  /// Embeddings (see FullyShardedModel). Units must not overlap.
  std::vector<std::string> units;
  /// Gather the next unit's params while the current one computes (forward, in the order the
  /// previous forward ran the units; backward, in reverse), as FSDP2 does. At most two units'
  /// full params are held at once. false: each unit gathers when it starts (for measuring).
  bool prefetch = true;
};

/// How long this rank waited for all-gathers (FullyShardedModel::gather_stats), cumulative.
struct GatherStats {
  int64_t gathers = 0;        ///< units' and the root's gathers, forward and backward
  int64_t prefetched = 0;     ///< of those, started before the unit needed them
  double wait_seconds = 0.0;  ///< from when a unit needed its params until they were there
};

struct FullyShardedContext;

/// Shards `model`'s params over `pg` along dim 0, in shard_range's layout (numpy.array_split:
/// a rank may hold 0 rows of a dim-0 extent below world_size), and marks each with
/// PartitionSpec::sharded(0, ndim), as Flax's nnx.with_partitioning(('data', ...)) does. The
/// params must be equal on every rank first (same seed, or broadcast_state).
///
/// The cycle of a unit: its forward all-gathers the unit's params into full tensors, runs the
/// unit without recording a graph, and frees them; its backward all-gathers them again,
/// recomputes the unit's forward with the same dropout draws (the Rngs counts are rewound) and
/// BatchNorm statistics left as the first forward set them, and reduce-scatters the full
/// gradients into each rank's rows (the mean over ranks, as all_reduce_mean gives data
/// parallel). With prefetch, the next unit's all-gather is in flight while a unit computes. The model
/// thus never holds more than one unit's full params, at the cost of a second forward per unit
/// (FSDP with activation checkpointing). The params of no unit (the root's own, and
/// Embeddings: GPT's output projection reads the tied embedding outside its forward) are
/// gathered once per forward() and kept by the graph until backward. 0-d params stay whole,
/// their gradient averaged over ranks by an all-reduce.
///
/// Gradients land in each param's shard (.grad of Variable::value()), so grads(model) and an
/// Optimizer built with Mesh{rank, world_size} step on shards only; checkpoints hold each
/// rank's shard, presented as the global array (virtual datasets), restorable at any world size.
/// The unit's modules stay in the tree at their paths; a unit is wrapped so that its parent's
/// forward goes through the cycle above. Not for modules whose methods other than forward()
/// read a unit's params, and not for clone() or merge() of the sharded model (a unit's copy
/// would run the original module).
class FullyShardedModel {
 public:
  /// Build it after the model is on its device and equal on every rank. Throws nnx::Error naming
  /// the path, before anything changes, when a unit path names no module, units overlap, a unit
  /// holds no param, or a param is not floating-point.
  FullyShardedModel(std::shared_ptr<Module> model, std::shared_ptr<ProcessGroup> pg, FullyShardOptions options = {});
  ~FullyShardedModel();
  /// model.forward(x): [B, ...] -> the model's output. Differentiable: backward() on a loss of
  /// it leaves each param's shard gradient.
  at::Tensor forward(const at::Tensor& x);
  /// The unit paths, in the order their modules appear in the tree.
  std::vector<std::string> unit_paths() const;
  /// All-gather time not hidden under compute, since construction. With prefetch on against
  /// off, the share hidden is 1 - wait_seconds(on) / wait_seconds(off) (nnx-bench --only fsdp).
  GatherStats gather_stats() const;
  /// The units `units` would give for `model` (FullyShardOptions::units: the defaults when
  /// empty), checked as the constructor checks them (units and params) and changing nothing:
  /// for validating a config where no model is sharded (one rank). Throws nnx::Error naming
  /// the path.
  static std::vector<std::string> resolve_units(Module& model, const std::vector<std::string>& units);
  Module& model() const;

 private:
  std::shared_ptr<Module> model_;
  std::shared_ptr<FullyShardedContext> ctx_;
  std::vector<std::string> unit_paths_;
};

}  // namespace nnx::distributed
