#include "optim/optimizer.h"

#include <ATen/ATen.h>

#include <unordered_set>

#include "framework/graph.h"
#include "framework/init.h"

namespace nnx::optim {

Optimizer::Optimizer(std::shared_ptr<Module> model, std::vector<std::shared_ptr<Transform>> tx,
                     const Filter& wrt)
    : model_(std::move(model)), tx_(std::move(tx)), wrt_(wrt) {
  NNX_CHECK(model_ != nullptr, "Optimizer needs a model");
  NNX_CHECK(!tx_.empty(), "Optimizer needs at least one transformation");
  std::vector<at::Tensor> params;
  for (auto& [path, var] : model_->named_variables()) {
    if (!wrt_(path, var.kind())) continue;
    NNX_CHECK(var.value().is_floating_point(), "Optimizer: variable '", path, "' (",
              var.kind().name(), ") is ", var.value().scalar_type(), ", not floating point");
    paths_.push_back(path);
    vars_.push_back(var);
    params.push_back(var.value());
  }
  NNX_CHECK(!paths_.empty(), "Optimizer: no variable of the model matches ", wrt_.description());
  register_variable("step", OptState(init::zeros({}, at::kLong)));
  for (auto& t : tx_) t->init(paths_, params, *this);
}

int64_t Optimizer::step_count() const { return variable("step").value().item<int64_t>(); }

double Optimizer::learning_rate() const {
  auto* adam = dynamic_cast<ScaleByAdam*>(tx_.back().get());
  NNX_CHECK(adam != nullptr, "the optimizer's last stage has no learning rate");
  return adam->options().learning_rate(step_count());
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
  at::NoGradGuard no_grad;
  UpdateContext ctx{paths_, params, g, step_count(), *this};
  for (auto& t : tx_) t->apply(ctx);
  at::Tensor& step = const_cast<at::Tensor&>(variable("step").value());
  variable("step").set_value(step + 1);
}

void Optimizer::step() { update(grads(*model_, wrt_)); }

}  // namespace nnx::optim
