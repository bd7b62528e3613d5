// Building a run's parts from its config: the process group, the resolved config file, the model
// (and its ZeRO-3 sharding), the optimizer and the loader. run.cpp steps them.
#include <ATen/ATen.h>

#include <fstream>
#include <iostream>

#include "nnx/framework/graph.h"
#include "nnx/framework/log.h"
#include "nnx/models/models.h"
#include "nnx/trainer/registry.h"
#include "nnx/trainer/run.h"

namespace nnx::trainer {

namespace stdfs = std::filesystem;

namespace {

std::ostream& null_stream() {
  static std::ostream s(nullptr);  // discards: only rank 0 prints
  return s;
}

// The learning-rate schedule the config names, peaking at `lr`.
optim::Schedule schedule_of(const Config& cfg) {
  const auto& sc = cfg.schedule;
  const double lr = cfg.optimizer.learning_rate;
  if (sc.type == "constant") return optim::constant(lr);
  if (sc.type == "linear_warmup") return optim::linear_warmup(lr, sc.warmup_steps, sc.init_value);
  if (sc.type == "cosine_decay") return optim::cosine_decay(lr, sc.decay_steps, sc.alpha);
  if (sc.type == "warmup_cosine") return optim::warmup_cosine(lr, sc.warmup_steps, sc.decay_steps, sc.end_value, sc.init_value);
  return optim::step_decay(lr, sc.step_size, sc.gamma);
}

}  // namespace

// Data parallel when started with several ranks (nnx-launch, torchrun, mpirun).
void Run::build_distributed() {
  const distributed::Env& env = ctx_.env;
  // Resolved in one process too: a backend this build or device cannot serve is a config error
  // before the run is scaled out.
  backend_ = distributed::resolve_backend(cfg_.distributed.backend, device_);
  if (env.world_size > 1) {
    ctx_.pg = distributed::ProcessGroup::create(env, std::chrono::seconds(cfg_.distributed.timeout_seconds), backend_);
    ctx_.ckpt_pg = ctx_.pg->new_group("checkpoint");
  }
  ctx_.lead = env.rank == 0;  // rank 0 prints, logs metrics and evaluates
  if (ctx_.lead)
    for (const auto& w : cfg_.warnings) log::warn_parts(w);
  ctx_.out = ctx_.lead ? &std::cout : &null_stream();
  ctx_.progress = ctx_.ropts.quiet ? &null_stream() : ctx_.out;
}

// The resolved config (every key, defaults filled in) goes to <run.dir>/config.json, written
// whole then renamed, instead of ~95 lines on the terminal; `--print-config` prints it.
void Run::write_resolved_config() {
  if (!ctx_.lead) return;
  const stdfs::path path = stdfs::path(cfg_.run_dir) / "config.json", tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << cfg_.to_json().dump(2) << "\n";
    out.flush();
    NNX_CHECK_IO(out.good(), "cannot write '", tmp.string(), "' (disk full?)");
  }
  std::error_code ec;
  stdfs::rename(tmp, path, ec);
  NNX_CHECK_IO(!ec, "cannot write '", path.string(), "': ", ec.message());
  *ctx_.progress << "nnx-train: config " << cfg_.source << " (resolved: " << path.string() << ")\n";
}

// A model type without its own build(): its ModuleRegistry type, from its options and the
// sizes its from_data binds.
static std::shared_ptr<Module> build_registered_module(const ModelType& type, const Config& c, const Datasets& ds,
                                                      std::shared_ptr<Rngs> rngs) {
  nlohmann::json o = c.model.options;
  for (const auto& [key, size] : type.from_data) switch (size) {
      case DataSize::kInFeatures: o[key] = ds.in_features; break;
      case DataSize::kNumClasses: o[key] = ds.num_classes; break;
      case DataSize::kVocabSize: o[key] = ds.vocab_size; break;
      case DataSize::kBlockSize: o[key] = c.data.block_size; break;
    }
  return models::build_model(type.module, o, std::move(rngs));
}

void Run::build_model(const Datasets& ds) {
  auto rngs = std::make_shared<Rngs>(std::map<std::string, uint64_t>{{"params", cfg_.seed}, {"dropout", cfg_.seed + 1}});
  const ModelType& type = model_type(cfg_.model.type);
  auto& model = state_.model;
  model = type.build ? type.build(cfg_.model.options, ds, cfg_, rngs) : build_registered_module(type, cfg_, ds, rngs);
  NNX_CHECK(model != nullptr, "model.type '", cfg_.model.type, "': its build() gave no module");
  if (cfg_.model.dtype == ParamDType::kBFloat16) model->to(at::kBFloat16);
  model->to(device_);
  // Per-rank dropout masks; key and count stay replicated (and checkpointed once).
  if (ctx_.env.world_size > 1 && model->has_child("rngs"))
    if (auto* r = dynamic_cast<Rngs*>(model->child_ptr("rngs").get()))
      r->stream("dropout")->set_salt(static_cast<uint64_t>(ctx_.env.rank) + 1);
  state_.graphdef = graphdef(*model).to_json();  // global shapes, whatever the stage
  // ZeRO-3: every rank built the same params from the seed; each keeps its rows of them.
  state_.zero3 = cfg_.distributed.zero_stage == 3 && ctx_.env.world_size > 1;
  if (cfg_.distributed.zero_stage == 3) shard_model();
}

void Run::shard_model() {
  distributed::FullyShardOptions o;
  o.units = cfg_.distributed.fsdp_units;
  o.prefetch = cfg_.distributed.fsdp_prefetch;
  try {  // units are checked at one rank too, where nothing is sharded: the same input, the same error
    if (state_.zero3) fsdp_ = std::make_unique<distributed::FullyShardedModel>(state_.model, ctx_.pg, o);
    else distributed::FullyShardedModel::resolve_units(*state_.model, o.units);
  } catch (const Error& e) {
    if (e.exit_code() != 2) throw;  // a failed collective stays an operational failure
    NNX_CHECK(false, cfg_.source, ": distributed.zero_stage 3 with model.type ", cfg_.model.type, ": ", e.what());
  }
}

void Run::build_optimizer() {
  optim::AdamOptions ao;
  ao.learning_rate = schedule_of(cfg_);
  ao.beta1 = cfg_.optimizer.beta1;
  ao.beta2 = cfg_.optimizer.beta2;
  ao.eps = cfg_.optimizer.eps;
  ao.weight_decay = cfg_.optimizer.weight_decay;
  ao.amsgrad = cfg_.optimizer.amsgrad;
  std::vector<Filter> exempt;
  for (const auto& p : cfg_.optimizer.no_decay) exempt.push_back(PathContains(p));
  ao.weight_decay_mask = Not(Any(exempt));
  std::vector<std::shared_ptr<optim::Transform>> tx;
  if (cfg_.optimizer.clip_norm > 0) tx.push_back(optim::clip_by_global_norm(cfg_.optimizer.clip_norm));
  tx.push_back(cfg_.optimizer.type == OptimizerType::kAdamW ? optim::adamw(ao) : optim::adam(ao));
  // ZeRO-1: each rank keeps the optimizer state of its rows of every param.
  const distributed::Env& env = ctx_.env;
  state_.zero1 = cfg_.distributed.zero_stage == 1 && env.world_size > 1;
  const bool sharded = state_.zero1 || state_.zero3;  // ZeRO-3's params are shards already: stepped as they are
  state_.optimizer = std::make_unique<optim::Optimizer>(state_.model, tx, Param, sharded ? Mesh{env.rank, env.world_size} : Mesh{});
  if (sharded) state_.optimizer->set_process_group(ctx_.pg);
  // ZeRO-3 reduces each unit's gradients in its backward.
  if (ctx_.pg && cfg_.distributed.overlap_grad_reduce && !state_.zero3)
    reducer_ = std::make_unique<distributed::GradientReducer>(*state_.model, ctx_.pg);
}

void Run::build_loader() {
  data::LoaderOptions lo;
  lo.batch_size = cfg_.train.batch_size;
  lo.shuffle = cfg_.data.shuffle;
  lo.seed = cfg_.seed;
  lo.rank = ctx_.env.rank;
  lo.world_size = ctx_.env.world_size;
  state_.loader = std::make_unique<data::DataLoader>(ds_.train, lo);
  state_.global_batch = cfg_.train.batch_size * ctx_.env.world_size;
}

}  // namespace nnx::trainer
