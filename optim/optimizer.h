// nnx::optim::Optimizer: nnx.Optimizer on libtorch, with state keyed by parameter path.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "nnx/framework/distributed.h"
#include "nnx/framework/filter.h"
#include "nnx/framework/module.h"
#include "nnx/framework/sharding.h"
#include "nnx/framework/state.h"
#include "nnx/optim/transform.h"

namespace nnx::optim {

/// Holds `step` (OptState, int64 scalar: updates applied) and the transformations' state per
/// selected param path, all as OptState variables of this module: nnx::state(optimizer), split,
/// update and checkpoints work on it as on any module. The model is referenced, not owned as
/// state: save nnx::state(model) and nnx::state(optimizer) as separate items.
class Optimizer : public ModuleBase<Optimizer> {
 public:
  /// Optimizes the variables of `model` matching `wrt` (default Param) with the chain `tx`
  /// (applied in order; the last stage updates the params). Throws nnx::Error when `wrt` selects
  /// nothing or a selected variable is not floating point.
  ///
  /// ZeRO-1 (Rajbhandari et al., 2020, stage 1), when `state_sharding.size` > 1: the state of
  /// each selected param with dim >= 1 covers only this rank's rows along dim 0
  /// (shard_range(size(0), rank, size), numpy.array_split's layout, so sizes need not divide),
  /// and carries the PartitionSpec ["data", null, ...] in its metadata; 0-d params keep whole,
  /// replicated state. update() then steps this rank's rows and all-gathers the params over the
  /// process group given to set_process_group(). The same constructor under eval_shape yields the
  /// sharded restore template of this rank.
  ///
  /// ZeRO-3 (distributed::FullyShardedModel): a selected param whose metadata already holds a
  /// sharded PartitionSpec is this rank's shard. With state_sharding.size > 1 it is stepped as
  /// it is (neither narrowed nor all-gathered), its state is shaped and annotated like it, and
  /// a global-norm stage sums its squares over the ranks.
  Optimizer(std::shared_ptr<Module> model, std::vector<std::shared_ptr<Transform>> tx,
            const Filter& wrt = Param, Mesh state_sharding = {});
  /// The process group ZeRO-1's updates reduce and all-gather over (its rank and size must be
  /// the state_sharding mesh's). Throws nnx::Error when they differ.
  void set_process_group(std::shared_ptr<distributed::ProcessGroup> pg);
  /// This rank's place on the mesh the state is sharded over ({0, 1}: not sharded).
  const Mesh& state_sharding() const { return mesh_; }

  /// One update from `grads` keyed by the selected paths (whole gradients, the same on every
  /// rank under ZeRO-1). Throws nnx::Error naming a missing or extra path, or a gradient whose
  /// shape differs from its param, or (ZeRO-1) when no process group was set.
  void update(const State& grads);
  /// update(nnx::grads(model, wrt)): the gradients currently in the params' .grad().
  void step();
  /// Updates applied so far (the `step` variable).
  int64_t step_count() const;
  /// The learning rate the next update will use: the last stage's that has one
  /// (Transform::learning_rate). Throws nnx::Error when none has.
  double learning_rate() const;
  /// The selected param paths in model order.
  const std::vector<std::string>& paths() const { return paths_; }
  const std::shared_ptr<Module>& model() const { return model_; }
  const std::vector<std::shared_ptr<Transform>>& transforms() const { return tx_; }
  std::string type_name() const override { return "Optimizer"; }

 private:
  void annotate_state_sharding(const std::vector<at::Tensor>& params);
  std::shared_ptr<Module> model_;
  std::vector<std::shared_ptr<Transform>> tx_;
  Filter wrt_;
  std::vector<std::string> paths_;
  std::vector<Variable> vars_;
  Mesh mesh_;
  std::vector<bool> sharded_;  // per selected path: state holds this rank's rows only
  std::vector<bool> presharded_;  // per selected path: the param itself is this rank's shard (ZeRO-3)
  std::shared_ptr<distributed::ProcessGroup> pg_;
};

}  // namespace nnx::optim
