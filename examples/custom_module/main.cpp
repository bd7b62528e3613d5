// Defines a Module of its own (with a user variable kind), trains it with nnx's Optimizer,
// checkpoints it with a CheckpointManager, and restores it into an abstract (eval_shape) copy.
#include <ATen/ATen.h>

#include <iostream>

#include <nnx/checkpoint/manager.h>
#include <nnx/framework/graph.h>
#include <nnx/framework/layers.h>
#include <nnx/optim/optimizer.h>

NNX_DEFINE_KIND(Scale, &nnx::Param);  // a user kind: optimized as a Param, filterable on its own

struct Regressor : nnx::ModuleBase<Regressor> {
  explicit Regressor(nnx::Rngs& rngs) {
    register_module("hidden", std::make_shared<nnx::Linear>(3, 16, rngs));
    register_module("out", std::make_shared<nnx::Linear>(16, 1, rngs));
    register_variable("scale", Scale(nnx::init::ones({1})));  // a kind of Param: trainable
  }
  at::Tensor forward(const at::Tensor& x) override {
    return child("out").forward(at::tanh(child("hidden").forward(x))) * variable("scale").value();
  }
};

int main(int argc, char** argv) {
  const std::string dir = argc > 1 ? argv[1] : "custom_module_ckpt";
  nnx::Rngs rngs(0);
  auto model = std::make_shared<Regressor>(rngs);
  nnx::optim::AdamOptions o;
  o.learning_rate = 0.05;
  nnx::optim::Optimizer opt(model, {nnx::optim::adam(o)});
  auto x = at::randn({256, 3}), y = (x * at::tensor({1.0f, -2.0f, 0.5f})).sum(1, true);
  double first = 0, last = 0;
  for (int step = 0; step < 100; ++step) {
    nnx::zero_grad(*model);
    auto loss = at::mse_loss(model->forward(x), y);
    loss.backward();
    opt.step();
    (step == 0 ? first : last) = loss.item<double>();
  }
  nnx::checkpoint::CheckpointManagerOptions mo;
  mo.max_to_keep = 1;
  nnx::checkpoint::CheckpointManager mgr(dir, mo);
  mgr.save(100, nnx::checkpoint::Composite{{"params", nnx::checkpoint::StandardSave(nnx::state(*model))},
                                          {"optimizer", nnx::checkpoint::StandardSave(nnx::state(opt))}},
           {{"loss", last}}, /*force=*/true);
  mgr.wait_until_finished();
  auto abstract = nnx::eval_shape([] {
    nnx::Rngs r(0);
    return std::make_shared<Regressor>(r);
  });
  auto restored = mgr.restore(std::nullopt, nnx::checkpoint::Composite{
                                                {"params", nnx::checkpoint::StandardRestore(nnx::state(*abstract))}});
  nnx::update(*abstract, restored.state("params"));
  const bool same = nnx::state(*abstract).equal(nnx::state(*model));
  std::cout << "loss " << first << " -> " << last << "; restored step " << *mgr.latest_step()
            << (same ? " equals the trained model" : " DIFFERS") << "; Scale variables: "
            << nnx::state(*model, Scale).size() << "\n";
  return same && last < first ? 0 : 1;
}
