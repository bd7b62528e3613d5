#include "nnx/optim/optimizer.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <unordered_map>
#include <unordered_set>

#include "nnx/framework/graph.h"
#include "nnx/framework/init.h"
#include "nnx/framework/shard_collectives.h"

namespace nnx::optim {

Optimizer::Optimizer(std::shared_ptr<Module> model, std::vector<std::shared_ptr<Transform>> tx,
                     const Filter& wrt, Mesh state_sharding)
    : model_(std::move(model)), tx_(std::move(tx)), wrt_(wrt), mesh_(state_sharding) {
  NNX_CHECK(model_ != nullptr, "Optimizer needs a model");
  NNX_CHECK(!tx_.empty(), "Optimizer needs at least one transformation");
  mesh_.validate();
  std::vector<at::Tensor> params;
  for (auto& [path, var] : model_->named_variables()) {
    if (!wrt_(path, var.kind())) continue;
    NNX_CHECK(var.value().is_floating_point(), "Optimizer: variable '", path, "' (",
              var.kind().name(), ") is ", var.value().scalar_type(), ", not floating point");
    paths_.push_back(path);
    vars_.push_back(var);
    const bool own_shard = mesh_.size > 1 && !get_partition_spec(var.metadata()).replicated();  // ZeRO-3
    const bool shard = mesh_.size > 1 && var.value().dim() >= 1;
    sharded_.push_back(shard || own_shard);
    presharded_.push_back(own_shard);
    // ZeRO-1: the stages see (and size their state by) this rank's rows only.
    params.push_back(shard && !own_shard ? shard_of(var.value(), PartitionSpec::sharded(0, var.value().dim()), mesh_)
                                         : var.value());
  }
  NNX_CHECK(!paths_.empty(), "Optimizer: no variable of the model matches ", wrt_.description());
  register_variable("step", OptState(init::zeros({}, at::kLong)));
  for (auto& t : tx_) {
    t->param_state_.clear();  // a stage given to several optimizers registers for each
    t->init(paths_, params, *this);
  }
  annotate_state_sharding(params);
}

// Each stage's per-param state (Transform::add_param_state) is annotated as its param is (Flax
// propagates a param's sharding to its optimizer state), and under ZeRO-1 as this rank's rows of
// it. Under ZeRO, state a stage registered otherwise would be saved as replicated: an error.
void Optimizer::annotate_state_sharding(const std::vector<at::Tensor>& params) {
  std::unordered_map<std::string, Variable> all;
  for (auto& [path, var] : named_variables()) all.emplace(path, var);
  std::unordered_set<std::string> of_a_param = {"step"};
  for (const auto& t : tx_)
    for (const auto& [path, i] : t->param_state_) {
      of_a_param.insert(path);
      Variable var = all.at(path);
      if (sharded_[i] && !presharded_[i]) {
        NNX_CHECK(var.value().sizes() == params[i].sizes(), "Optimizer (ZeRO-1): state '", path, "' has shape ",
                  format_shape(var.value().sizes()), ", expected the shape of this rank's shard of '", paths_[i], "' ",
                  format_shape(params[i].sizes()));
        set_partition_spec(var, PartitionSpec::sharded(0, var.value().dim()));
      } else if (const PartitionSpec spec = get_partition_spec(vars_[i].metadata());
                 !spec.replicated() && var.value().sizes() == params[i].sizes()) {
        set_partition_spec(var, spec);  // a moment of a sharded param (ZeRO-3's too) holds the same shard
      }
    }
  if (mesh_.size == 1) return;
  for (const auto& [path, var] : all)
    NNX_CHECK(of_a_param.count(path), "Optimizer (ZeRO): state '", path, "' was not registered with "
              "Transform::add_param_state; a stage's per-param state must be, so that it is sharded as its param");
}

void Optimizer::set_process_group(std::shared_ptr<distributed::ProcessGroup> pg) {
  if (pg)
    NNX_CHECK(pg->rank() == mesh_.rank && pg->world_size() == mesh_.size, "Optimizer: process group is rank ",
              pg->rank(), " of ", pg->world_size(), ", the optimizer state is sharded as rank ", mesh_.rank, " of ",
              mesh_.size);
  pg_ = std::move(pg);
}

int64_t Optimizer::step_count() const { return variable("step").value().item<int64_t>(); }

double Optimizer::learning_rate() const {
  for (auto it = tx_.rbegin(); it != tx_.rend(); ++it)
    if (const auto lr = (*it)->learning_rate(step_count())) return *lr;
  NNX_CHECK(false, "no stage of the optimizer has a learning rate");
  return 0;
}

void Optimizer::update(const State& grads) {
  std::vector<at::Tensor> params, g;
  params.reserve(paths_.size());
  g.reserve(paths_.size());
  for (size_t i = 0; i < paths_.size(); ++i) {
    NNX_CHECK(grads.contains(paths_[i]), "Optimizer.update: no gradient for '", paths_[i], "'");
    const at::Tensor& p = vars_[i].value();
    const at::Tensor& gi = grads.at(paths_[i]).value;
    NNX_CHECK(gi.sizes() == p.sizes(), "Optimizer.update: gradient of '", paths_[i], "' has shape ",
              format_shape(gi.sizes()), ", param has ", format_shape(p.sizes()));
    params.push_back(p);
    g.push_back(gi.detach());  // stages replace entries of g; they never write into the caller's tensors
  }
  if (grads.size() != paths_.size()) {
    std::unordered_set<std::string> known(paths_.begin(), paths_.end());
    for (const auto& [path, vs] : grads)
      NNX_CHECK(known.count(path), "Optimizer.update: gradient for '", path,
                "' which is not an optimized variable");
  }
  c10::NoGradGuard no_grad;
  std::vector<at::Tensor> whole;  // ZeRO-1: the params to all-gather after the step
  if (mesh_.size > 1) {
    NNX_CHECK(pg_ != nullptr, "Optimizer: the state is sharded over ", mesh_.size,
              " ranks (ZeRO-1); call set_process_group() before update()");
    for (size_t i = 0; i < paths_.size(); ++i) {
      if (!sharded_[i] || presharded_[i]) continue;  // a ZeRO-3 param is already this rank's shard
      whole.push_back(params[i]);
      auto r = shard_range(params[i].size(0), mesh_.rank, mesh_.size);
      params[i] = params[i].narrow(0, r.start, r.size);  // a view: the step writes into the param
      g[i] = g[i].narrow(0, r.start, r.size);
    }
  }
  UpdateContext ctx{paths_, params, g, step_count(), *this};
  if (mesh_.size > 1) {
    ctx.mesh = mesh_;
    ctx.sharded = &sharded_;
    ctx.all_reduce_sum = [this](std::vector<at::Tensor>& v) { pg_->all_reduce_sum(v); };
  }
  for (auto& t : tx_) t->apply(ctx);
  if (!whole.empty()) distributed::all_gather_shards(whole, *pg_);
  at::Tensor& step = const_cast<at::Tensor&>(variable("step").value());
  variable("step").set_value(step + 1);
}

void Optimizer::step() { update(grads(*model_, wrt_)); }

}  // namespace nnx::optim
