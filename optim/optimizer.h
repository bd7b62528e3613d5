// nnx::optim::Optimizer: nnx.Optimizer on libtorch, with state keyed by parameter path.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "framework/filter.h"
#include "framework/module.h"
#include "framework/state.h"
#include "optim/transform.h"

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
  Optimizer(std::shared_ptr<Module> model, std::vector<std::shared_ptr<Transform>> tx,
            const Filter& wrt = Param);

  /// One update from `grads` keyed by the selected paths. Throws nnx::Error naming a missing or
  /// extra path, or a gradient whose shape differs from its param.
  void update(const State& grads);
  /// update(nnx::grads(model, wrt)): the gradients currently in the params' .grad().
  void step();
  /// Updates applied so far (the `step` variable).
  int64_t step_count() const;
  /// The learning rate the next update will use, when the last stage is ScaleByAdam.
  double learning_rate() const;
  /// The selected param paths in model order.
  const std::vector<std::string>& paths() const { return paths_; }
  const std::shared_ptr<Module>& model() const { return model_; }
  const std::vector<std::shared_ptr<Transform>>& transforms() const { return tx_; }
  std::string type_name() const override { return "Optimizer"; }

 private:
  std::shared_ptr<Module> model_;
  std::vector<std::shared_ptr<Transform>> tx_;
  Filter wrt_;
  std::vector<std::string> paths_;
  std::vector<Variable> vars_;
};

}  // namespace nnx::optim
