// The seed's workflow (examples/seed_workflow) on data-parallel ranks, checkpointed by the
// multi-tier CheckpointManager (Orbax's emergency checkpointing): every 2 steps each rank saves
// its state to a local tier in host memory and a replica to its peer; every 10 steps the
// persistent tier on shared storage. Killed anywhere, a rerun resumes from the newest step every
// rank can get, also when a rank's local folder is gone (a replaced host): from its peer's copy.
//
//   nnx-launch --nproc 2 -- multi_tier <run dir> [<local dir>] [--crash-after STEP --crash-rank R]
//
// It trains 20 steps and prints where it resumed from; tests/install_test.sh kills rank 1, wipes
// its local folder, reruns, and compares the last step with an uninterrupted run's (nnx-ckpt diff).
#include <nnx/checkpoint/emergency/local_tier.h>
#include <nnx/framework/distributed.h>
#include <nnx/nnx.h>
#include <signal.h>

#include <chrono>
#include <iostream>
#include <string>

using namespace nnx;
namespace ocp = nnx::checkpoint;

struct SimpleLinear : ModuleBase<SimpleLinear> {
  SimpleLinear(int64_t din, int64_t dout, const Rngs& rngs) {
    register_variable("w", Param(init::normal({din, dout}, 1.0, rngs.params())));
    register_variable("b", Param(init::zeros({dout})));
  }
  at::Tensor forward(const at::Tensor& x) override { return at::matmul(x, variable("w").value()) + variable("b").value(); }
};

// What a save writes, the same for both tiers here (plain data parallel: every rank holds all).
ocp::Composite save_args(const Module& model, const optim::Optimizer& optimizer, int64_t step) {
  return {{"params", ocp::StandardSave(state(model))},
          {"optimizer", ocp::StandardSave(state(optimizer))},
          {"data", ocp::JsonSave({{"index", step}})}};
}

// The command line: a run folder, an optional local folder, and where to kill a rank.
struct Args {
  std::string run_dir, local_dir;
  int64_t crash_after = -1;
  int crash_rank = -1;
};

Args parse_args(int argc, char** argv) {
  Args a;
  a.run_dir = argv[1];
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--crash-after" && i + 1 < argc) a.crash_after = std::stoll(argv[++i]);
    else if (arg == "--crash-rank" && i + 1 < argc) a.crash_rank = std::stoi(argv[++i]);
    else a.local_dir = arg;
  }
  return a;
}

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: multi_tier <run dir> [<local dir>] [--crash-after STEP --crash-rank R]\n";
    return 2;
  }
  const Args args = parse_args(argc, argv);
  const distributed::Env env = distributed::env_from_environment();
  auto pg = env.world_size > 1 ? distributed::ProcessGroup::create(env, std::chrono::seconds(60)) : nullptr;

  auto model = std::make_shared<SimpleLinear>(4, 3, Rngs({{"params", 0}}));
  optim::Optimizer optimizer(model, {optim::adamw(optim::AdamOptions(1e-2))});

  ocp::emergency::CheckpointManagerOptions options;
  options.local.save_interval_steps = 2;
  options.local.max_to_keep = 2;
  options.local.replicas = 1;
  options.local.async = false;  // each local save committed inside its step (the kill below is exact)
  options.local.directory = args.local_dir;  // "" = default_local_directory(run dir's checkpoints)
  options.persistent.save_interval_steps = 10;
  options.persistent.max_to_keep = 2;
  options.persistent.enable_async_checkpointing = false;
  ocp::emergency::CheckpointManager mngr(args.run_dir + "/checkpoints", options, pg);

  int64_t start = 0;
  const auto restored = mngr.restore(ocp::Composite{{"params", ocp::StandardRestore(state(*model))},
                                                    {"optimizer", ocp::StandardRestore(state(optimizer))},
                                                    {"data", ocp::JsonRestore()}});
  if (restored) {
    update(*model, restored->restored.state("params"));
    update(optimizer, restored->restored.state("optimizer"));
    start = restored->restored.json_item("data")["index"];
    if (env.rank == 0)
      std::cout << "resumed from step " << restored->step << " (" << (restored->from_local_tier ? "local" : "persistent")
                << " tier)\n";
  }

  // Each rank's own batch (its shard of the data); gradients averaged over the ranks.
  const at::Tensor x = at::ones({8, 4}) * (env.rank + 1), y = at::zeros({8, 3});
  for (int64_t step = start + 1; step <= 20; ++step) {
    zero_grad(*model);
    at::mse_loss(model->forward(x), y).backward();
    State g = grads(*model);
    if (pg) distributed::all_reduce_mean(g, *pg);
    optimizer.update(g);
    mngr.save(step, save_args(*model, optimizer, step), nullptr, /*force=*/step == 20);  // the last step always
    // Replicas are sent in the background, and a step is not replicated while an older transfer
    // still runs. A run that is to be killed waits for each, so the kill comes at a known point.
    if (args.crash_after >= 0) mngr.local().wait_for_replicas();
    if (step == args.crash_after && (args.crash_rank < 0 || args.crash_rank == env.rank)) ::raise(SIGKILL);
  }
  mngr.wait_until_finished();
  // The newest step must reach the persistent tier before the local tier goes: a run killed
  // after step 20's local save resumes here with nothing to train, and close() saves it.
  mngr.close([&](int64_t step) { return save_args(*model, optimizer, step); });
  if (env.rank == 0) std::cout << "done: step 20, persistent tier latest " << *mngr.latest_step() << "\n";
  return 0;
}
