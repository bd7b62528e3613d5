// Gradient transformations composed into an optimizer (optax-style chain).
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "nnx/framework/filter.h"
#include "nnx/framework/module.h"
#include "nnx/framework/sharding.h"
#include "nnx/optim/schedule.h"

namespace nnx::optim {

/// What a transformation sees during one update.
struct UpdateContext {
  const std::vector<std::string>& paths;  ///< the selected Param paths, in model order
  std::vector<at::Tensor>& params;        ///< their tensors (updated in place by the last stage)
  std::vector<at::Tensor>& grads;         ///< gradients; a stage replaces entries, never writes into them
  int64_t step;                           ///< updates applied before this one
  Module& state;                          ///< the optimizer: transformations keep OptState here
  /// ZeRO-1 (mesh.size > 1): params and grads are this rank's shards (rows along dim 0) of the
  /// params marked in `sharded`; the others are whole and replicated. A stage that reduces over
  /// all params (a global norm) sums its partial result over ranks with `all_reduce_sum`,
  /// counting replicated params on rank 0 only.
  Mesh mesh = {};
  const std::vector<bool>* sharded = nullptr;
  std::function<void(std::vector<at::Tensor>&)> all_reduce_sum = {};
};

class Optimizer;

/// One stage of an optimizer. State lives in OptState variables registered on the optimizer
/// under this stage's own names (e.g. "mu/<param path>"), so it is checkpointed by path.
class Transform {
 public:
  virtual ~Transform() = default;
  /// Registers this stage's state for the selected params (abstract-aware: use init::zeros).
  /// State of one param goes through add_param_state(); other state (a step count of the
  /// stage's own) through insert_variable().
  virtual void init(const std::vector<std::string>& paths, const std::vector<at::Tensor>& params,
                    Module& state) {}
  /// Applies the stage. Runs under no-grad. A stage that writes params or its state in place
  /// calls nnx::prepare_write on them first (the write fence of deferred checkpoint snapshots,
  /// framework/write_fence.h); ctx.grads are the stage's own to replace.
  virtual void apply(UpdateContext& ctx) = 0;
  /// A JSON description (type and hyper-parameters).
  virtual nlohmann::json to_json() const = 0;
  /// The learning rate this stage applies at update `step` (0-based), for a stage that has one.
  virtual std::optional<double> learning_rate(int64_t step) const { return std::nullopt; }

 protected:
  /// In init(): registers `value` at `path` below `state` as state of param `param` (its index
  /// in init's lists). The Optimizer annotates it as that param is sharded (Flax propagates a
  /// param's sharding to its optimizer state); under ZeRO-1 it must be shaped like this rank's
  /// rows of the param. Under ZeRO, state registered otherwise is an error at construction.
  void add_param_state(Module& state, const std::string& path, size_t param, Variable value);

 private:
  friend class Optimizer;
  std::vector<std::pair<std::string, size_t>> param_state_;  // (state path, param index), by init()
};

/// Scales all gradients by min(1, max_norm / (total_norm + 1e-6)) where total_norm is the L2
/// norm of all gradients together (torch.nn.utils.clip_grad_norm_, optax.clip_by_global_norm).
/// The norm before clipping is readable through last_norm() (not state). Under ZeRO-1 the
/// squared norms of the ranks' shards are summed over ranks, so every rank clips by the norm of
/// the whole gradient.
class ClipByGlobalNorm : public Transform {
 public:
  /// Throws nnx::Error when max_norm <= 0.
  explicit ClipByGlobalNorm(double max_norm);
  void apply(UpdateContext& ctx) override;
  nlohmann::json to_json() const override;
  double last_norm() const { return last_norm_; }

 private:
  double max_norm_;
  double last_norm_ = 0.0;
};

/// Options of Adam / AdamW (torch.optim.Adam / AdamW's hyper-parameters).
struct AdamOptions {
  /// AdamOptions(1e-3), as torch::optim::AdamOptions(lr). The other options are fields, set by
  /// name (docs/from-flax.md says why there are no chained setters).
  AdamOptions(Schedule lr = 1e-3) : learning_rate(std::move(lr)) {}  // NOLINT: {} and adam({}) keep working
  Schedule learning_rate;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  /// Unset: PyTorch's defaults, 0 for adam() and 0.01 for adamw() (torch.optim.Adam / AdamW).
  std::optional<double> weight_decay;
  /// AdamW's decoupled decay p *= 1 - lr * wd (Loshchilov & Hutter, 2019) instead of Adam's L2
  /// term added to the gradient.
  bool decoupled_weight_decay = false;
  bool amsgrad = false;
  /// Which params get weight decay (default all); e.g. Not(Any({PathContains("bias"), ...})).
  Filter weight_decay_mask = Everything();
  /// For bf16/fp16 params: keep fp32 master weights ("master/<path>") and fp32 moments, step
  /// them in fp32 and copy the rounded result into the params.
  bool master_weights = true;

  /// Throws nnx::Error naming the bad value (lr < 0 at step 0, betas outside [0, 1), eps < 0,
  /// weight_decay < 0).
  void validate() const;
};

/// Adam's update with bias correction and eps placement exactly as torch.optim.Adam
/// (Kingma & Ba, 2015) / torch.optim.AdamW, on libtorch's multi-tensor _foreach_ ops.
/// State per param path: "mu/<path>", "nu/<path>" (fp32 for low-precision params), and
/// "nu_max/<path>" with amsgrad, "master/<path>" for bf16/fp16 params with master_weights.
class ScaleByAdam : public Transform {
 public:
  explicit ScaleByAdam(AdamOptions options);
  void init(const std::vector<std::string>& paths, const std::vector<at::Tensor>& params,
            Module& state) override;
  void apply(UpdateContext& ctx) override;
  nlohmann::json to_json() const override;
  std::optional<double> learning_rate(int64_t step) const override { return options_.learning_rate(step); }
  const AdamOptions& options() const { return options_; }

 private:
  // One param's state, bound once (handles: a restore's set_value is seen through them), so a
  // step looks up no path.
  struct Slot {
    Variable mu, nu, nu_max, master;  // nu_max: amsgrad; master: low-precision params
    bool decay = false;               // weight_decay_mask selects it
  };
  void bind(const UpdateContext& ctx);
  AdamOptions options_;
  std::vector<Slot> slots_;
  const Module* bound_state_ = nullptr;               // the optimizer slots_ belong to
  const std::vector<std::string>* bound_paths_ = nullptr;  // and its param paths
  at::Tensor scratch_;  // reused denominators of one group (not state)
};

/// torch.optim.Adam as a transformation (weight_decay unset means 0, as in PyTorch).
std::shared_ptr<Transform> adam(AdamOptions options = {});
/// torch.optim.AdamW (decoupled weight decay; weight_decay unset means 0.01, as in PyTorch).
std::shared_ptr<Transform> adamw(AdamOptions options = {});
/// Global-norm gradient clipping.
std::shared_ptr<Transform> clip_by_global_norm(double max_norm);

}  // namespace nnx::optim
