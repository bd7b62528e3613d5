// The Flax NNX + Orbax checkpointing workflow in C++, block by block. Each block follows the
// Python it translates ("// py:" lines; docs/from-flax.md maps every call). Built against the
// installed package and run by the test suite (tests/install_test.sh), which also checks that
// the C++ (lines that are not comments or blank) stays within 1.3 x the Python's lines.
// py: import jax.numpy as jnp
// py: import optax
// py: import orbax.checkpoint as ocp
// py: from flax import nnx
#include <nnx/nnx.h>
using namespace nnx;
namespace ocp = nnx::checkpoint;

// py: class SimpleLinear(nnx.Module):
// py:   def __init__(self, din, dout, *, rngs: nnx.Rngs):
// py:     self.w = nnx.Param(nnx.initializers.normal(1.0)(rngs.params(), (din, dout)), sharding=('data', None))
// py:     self.b = nnx.Param(jnp.zeros((dout,)))
// py:   def __call__(self, x):
// py:     return x @ self.w + self.b
struct SimpleLinear : ModuleBase<SimpleLinear> {
  SimpleLinear(int64_t din, int64_t dout, const Rngs& rngs) {
    register_variable("w", Param(init::normal({din, dout}, 1.0, rngs.params())));
    set_partition_spec(variable("w"), PartitionSpec({"data", std::nullopt}));
    register_variable("b", Param(init::zeros({dout})));
  }
  at::Tensor forward(const at::Tensor& x) override { return at::matmul(x, variable("w").value()) + variable("b").value(); }
};

// The last block: a Composite restored with update into a fresh model and optimizer.
bool restore_into_fresh(ocp::CheckpointManager& mngr, const Module& model, const optim::Optimizer& optimizer) {
  // py: fresh = SimpleLinear(4, 3, rngs=nnx.Rngs(params=1))
  // py: fresh_optimizer = nnx.Optimizer(fresh, optax.adamw(1e-3))
  // py: restored = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
  // py:     params=ocp.args.StandardRestore(nnx.state(fresh)),
  // py:     optimizer=ocp.args.StandardRestore(nnx.state(fresh_optimizer)), data=ocp.args.JsonRestore()))
  // py: nnx.update(fresh, restored.params)
  // py: nnx.update(fresh_optimizer, restored.optimizer)
  // py: assert restored.data['index'] == 4 and mngr.all_steps() == [2, 3, 4]
  auto fresh = std::make_shared<SimpleLinear>(4, 3, Rngs({{"params", 1}}));
  optim::Optimizer fresh_optimizer(fresh, {optim::adamw(optim::AdamOptions(1e-3))});
  auto restored = mngr.restore(mngr.latest_step(), ocp::Composite{{"params", ocp::StandardRestore(state(*fresh))},
      {"optimizer", ocp::StandardRestore(state(fresh_optimizer))}, {"data", ocp::JsonRestore()}});
  update(*fresh, restored.state("params"));
  update(fresh_optimizer, restored.state("optimizer"));
  return restored.json_item("data")["index"] == 4 && mngr.all_steps() == std::vector<int64_t>{2, 3, 4} &&
         state(*fresh).equal(state(model)) && state(fresh_optimizer).equal(state(optimizer));
}

int main(int argc, char** argv) {
  // py: model = SimpleLinear(4, 3, rngs=nnx.Rngs(params=0))
  // py: mngr = ocp.CheckpointManager(dir, options=ocp.CheckpointManagerOptions(max_to_keep=3))
  // py: _, state = nnx.split(model)
  // py: mngr.save(1, args=ocp.args.StandardSave(state))
  // py: mngr.wait_until_finished()
  auto model = std::make_shared<SimpleLinear>(4, 3, Rngs({{"params", 0}}));
  ocp::CheckpointManagerOptions options;
  options.max_to_keep = 3;
  ocp::CheckpointManager mngr(argc > 1 ? argv[1] : "/tmp/seed_workflow", options);
  auto [graphdef0, state0] = split(*model);
  mngr.save(1, ocp::StandardSave(state0));
  mngr.wait_until_finished();

  // py: abstract_model = nnx.eval_shape(lambda: SimpleLinear(4, 3, rngs=nnx.Rngs(params=0)))
  // py: graphdef, abstract_state = nnx.split(abstract_model)
  // py: state = mngr.restore(mngr.latest_step(), args=ocp.args.StandardRestore(abstract_state))
  // py: model = nnx.merge(graphdef, state)
  auto abstract_model = eval_shape([] { return std::make_shared<SimpleLinear>(4, 3, Rngs({{"params", 0}})); });
  auto [graphdef, abstract_state] = split(*abstract_model);
  State restored_state = mngr.restore(mngr.latest_step(), ocp::StandardRestore(abstract_state));
  model = merge_as<SimpleLinear>(graphdef, restored_state);

  // py: optimizer = nnx.Optimizer(model, optax.adamw(1e-3))
  // py: x, y = jnp.ones((8, 4)), jnp.zeros((8, 3))
  // py: for step in range(2, 5):
  // py:   grads = nnx.grad(lambda m: ((m(x) - y) ** 2).mean())(model)
  // py:   optimizer.update(grads)
  // py:   mngr.save(step, args=ocp.args.Composite(
  // py:       params=ocp.args.StandardSave(nnx.state(model)),
  // py:       optimizer=ocp.args.StandardSave(nnx.state(optimizer)),
  // py:       data=ocp.args.JsonSave({'epoch': 0, 'index': step})))
  // py: mngr.wait_until_finished()
  optim::Optimizer optimizer(model, {optim::adamw(optim::AdamOptions(1e-3))});
  const at::Tensor x = at::ones({8, 4}), y = at::zeros({8, 3});
  for (int64_t step = 2; step < 5; ++step) {
    zero_grad(*model);
    at::mse_loss(model->forward(x), y).backward();
    optimizer.update(grads(*model));
    mngr.save(step, ocp::Composite{{"params", ocp::StandardSave(state(*model))},
                                   {"optimizer", ocp::StandardSave(state(optimizer))},
                                   {"data", ocp::JsonSave({{"epoch", 0}, {"index", step}})}});
  }
  mngr.wait_until_finished();

  // py: mngr.close()
  const bool ok = restore_into_fresh(mngr, *model, optimizer);
  mngr.close();
  return ok ? 0 : 1;
}
