#include "nnx/trainer/run.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>
#include <signal.h>
#include <unistd.h>

#include <cmath>
#include <fstream>
#include <iomanip>
#include <iostream>

#include "nnx/checkpoint/emergency/local_tier.h"
#include "nnx/checkpoint/manager.h"
#include "nnx/framework/blas.h"
#include "nnx/framework/compat.h"
#include "nnx/framework/gradient_reducer.h"
#include "nnx/framework/graph.h"
#include "nnx/framework/host_memory.h"
#include "nnx/framework/log.h"
#include "nnx/framework/sharding.h"
#include "nnx/models/models.h"
#include "nnx/trainer/registry.h"
#include "nnx/trainer/checkpoint_options.h"
#include "nnx/trainer/torch_import.h"

namespace nnx::trainer {

namespace stdfs = std::filesystem;
using checkpoint::Composite;
using checkpoint::JsonRestore;
using checkpoint::JsonSave;
using checkpoint::StandardRestore;
using checkpoint::StandardSave;

namespace {

at::Tensor loss_fn(const at::Tensor& logits, const at::Tensor& targets) {
  if (logits.dim() == 3) return at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}));
  return at::cross_entropy_loss(logits, targets);
}

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  int64_t t = static_cast<int64_t>(s);
  std::ostringstream os;
  if (t >= 3600) os << t / 3600 << "h";
  if (t >= 60) os << (t / 60) % 60 << "m";
  os << std::setw(t >= 60 ? 2 : 1) << std::setfill('0') << t % 60 << "s";
  return os.str();
}

void write_metrics_file(const stdfs::path& path, const nlohmann::json& history) {
  const stdfs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    NNX_CHECK_IO(out.good(), "cannot write '", tmp.string(), "'");
    for (const auto& rec : history) out << rec.dump() << "\n";
    out.flush();
    NNX_CHECK_IO(out.good(), "cannot write '", tmp.string(), "' (disk full?)");
  }
  stdfs::rename(tmp, path);
}

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

Run::Run(const Config& cfg, const RunOptions& ropts)
    : cfg_(cfg), ropts_(ropts), device_(c10::kCPU), out_(&std::cout) {
  keep_freed_memory();
  use_huge_pages_for_large_tensors();  // before the model and the restore allocate the state
  if (cfg_.threads > 0) {  // the BLAS's own pool too (OpenBLAS ignores at::set_num_threads)
    at::set_num_threads(cfg_.threads);
    set_blas_num_threads(cfg_.threads);
  }
  if (blas_is_reference())
    log::warn_parts("the reference BLAS (", blas_library_path(),
                    ") is active; matmuls run ~25x slower. Run tools/setup.sh to select OpenBLAS.");
  build_distributed();
  device_ = compat::training_device(cfg_.device, env_.local_rank);  // each rank on its LOCAL_RANK's GPU
  compat::set_current_device(device_);
  compat::set_cudnn_flags(cfg_.cudnn.benchmark, cfg_.cudnn.deterministic);
  ds_ = load_data(cfg_);
  build_model(ds_);
  build_optimizer();
  build_loader_and_manager();
}

// Data parallel when started with several ranks (nnx-launch, torchrun, mpirun).
void Run::build_distributed() {
  env_ = distributed::env_from_environment();
  // Resolved in one process too: a backend this build or device cannot serve is a config error
  // before the run is scaled out.
  backend_ = distributed::resolve_backend(cfg_.distributed.backend, device_);
  if (env_.world_size > 1) {
    pg_ = distributed::ProcessGroup::create(env_, std::chrono::seconds(cfg_.distributed.timeout_seconds), backend_);
    ckpt_pg_ = pg_->new_group("checkpoint");
  }
  lead_ = env_.rank == 0;  // rank 0 prints, logs metrics and evaluates
  log::configure("nnx-train", env_.rank, env_.world_size);
  if (!cfg_.log_level.empty()) log::set_level(log::level_from_string(cfg_.log_level));
  if (lead_)
    for (const auto& w : cfg_.warnings) log::warn_parts(w);
  out_ = lead_ ? &std::cout : &null_stream();
  progress_ = ropts_.quiet ? &null_stream() : out_;
}

// The resolved config (every key, defaults filled in) goes to <run.dir>/config.json, written
// whole then renamed, instead of ~95 lines on the terminal; `--print-config` prints it.
void Run::write_resolved_config() {
  if (!lead_) return;
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
  *progress_ << "nnx-train: config " << cfg_.source << " (resolved: " << path.string() << ")\n";
}

// mlp, cnn, gpt through ModuleRegistry (a checkpoint's GraphDef rebuilds them alone), their
// options completed with the data's sizes.
static std::shared_ptr<Module> build_builtin_model(const Config& c, const Datasets& ds, std::shared_ptr<Rngs> rngs) {
  const std::string type = c.model.type == "mlp" ? "MLP" : c.model.type == "cnn" ? "CNN" : "GPT";
  nlohmann::json o = c.model.options;
  if (type == "MLP") o["in_features"] = ds.in_features;
  if (type != "GPT") o["num_classes"] = ds.num_classes;
  if (type == "GPT") {
    o["vocab_size"] = ds.vocab_size;
    o["block_size"] = c.data.block_size;
  }
  return models::build_model(type, o, std::move(rngs));
}

void Run::build_model(const Datasets& ds) {
  auto rngs = std::make_shared<Rngs>(std::map<std::string, uint64_t>{{"params", cfg_.seed}, {"dropout", cfg_.seed + 1}});
  const ModelType& type = model_type(cfg_.model.type);
  model_ = type.build ? type.build(cfg_.model.options, ds, cfg_, rngs) : build_builtin_model(cfg_, ds, rngs);
  NNX_CHECK(model_ != nullptr, "model.type '", cfg_.model.type, "': its build() gave no module");
  if (cfg_.model.dtype == "bfloat16") model_->to(at::kBFloat16);
  model_->to(device_);
  // Per-rank dropout masks; key and count stay replicated (and checkpointed once).
  if (env_.world_size > 1 && model_->has_child("rngs"))
    if (auto* r = dynamic_cast<Rngs*>(model_->child_ptr("rngs").get()))
      r->stream("dropout")->set_salt(static_cast<uint64_t>(env_.rank) + 1);
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
  tx.push_back(cfg_.optimizer.type == "adamw" ? optim::adamw(ao) : optim::adam(ao));
  // ZeRO-1: each rank keeps the optimizer state of its rows of every param.
  zero1_ = cfg_.distributed.zero_stage == 1 && env_.world_size > 1;
  optimizer_ = std::make_unique<optim::Optimizer>(model_, tx, Param, zero1_ ? Mesh{env_.rank, env_.world_size} : Mesh{});
  if (zero1_) optimizer_->set_process_group(pg_);
  if (pg_ && cfg_.distributed.overlap_grad_reduce) reducer_ = std::make_unique<distributed::GradientReducer>(*model_, pg_);
}

void Run::build_loader_and_manager() {
  data::LoaderOptions lo;
  lo.batch_size = cfg_.train.batch_size;
  lo.shuffle = cfg_.data.shuffle;
  lo.seed = cfg_.seed;
  lo.rank = env_.rank;
  lo.world_size = env_.world_size;
  loader_ = std::make_unique<data::DataLoader>(ds_.train, lo);
  global_batch_ = cfg_.train.batch_size * env_.world_size;
  {
    std::error_code ec;  // a run.dir that cannot be made is a config error (exit 2), named as such
    stdfs::create_directories(cfg_.run_dir, ec);
    NNX_CHECK(!ec, "run.dir '", cfg_.run_dir, "' (", cfg_.run_dir_origin, "): cannot create it: ", ec.message());
  }
  checkpoint::emergency::CheckpointManagerOptions mo;
  mo.persistent = manager_options(cfg_.checkpoint);
  mo.persistent.process_group = ckpt_pg_;
  mo.local = cfg_.checkpoint.local;
  if (mo.local.directory.empty()) mo.local.directory = checkpoint::emergency::default_local_directory(cfg_.run_dir).string();
  tiers_ = std::make_unique<checkpoint::emergency::CheckpointManager>(stdfs::path(cfg_.run_dir) / "checkpoints", mo, pg_);
  manager_ = &tiers_->persistent();
  metrics_path_ = stdfs::path(cfg_.run_dir) / "metrics.jsonl";
}

// A changed model is reported as such (its GraphDef against the checkpoint's), before the
// restore would fail on a shape. A checkpoint whose GraphDef cannot be read is left to the
// restore, which reports it (or falls back from it).
void Run::check_same_model(int64_t at) {
  nlohmann::json saved;
  try {
    saved = manager_->restore(at, Composite{{"graphdef", JsonRestore()}}).json_item("graphdef");
  } catch (const Error&) {
    return;
  }
  const nlohmann::json now = graphdef(*model_).to_json();
  if (saved == now) return;
  std::string list;
  try {  // the config keys behind it, where the checkpoint's config reads
    const auto saved_config = manager_->restore(at, Composite{{"config", JsonRestore()}}).json_item("config");
    for (const auto& l : structural_differences(saved_config, cfg_.to_json())) list += "\n  " + l;
  } catch (const Error&) {
  }
  // Each GraphDef difference cut to a line: a layer added or removed changes whole node lists
  // (several KB of JSON on one line).
  const auto changes = json_differences(saved, now);
  for (size_t i = 0; i < changes.size() && i < 5; ++i)
    list += "\n  graphdef " + (changes[i].size() > 160 ? changes[i].substr(0, 157) + "..." : changes[i]);
  if (changes.size() > 5) list += "\n  ... (" + std::to_string(changes.size() - 5) + " more GraphDef differences)";
  throw ModelChangedError("cannot resume '" + cfg_.run_dir + "' from step " + std::to_string(at) +
                          ": the model changed since the checkpoint was written (its GraphDef differs):" + list +
                          "\n  use a new run.dir, or restore the original model settings");
}

// Restores the newest step (or --resume-from): from the local tier when it holds a step on
// every rank at least as new as the persistent tier's latest, else from the persistent tier.
// Returns whether the run resumed.
bool Run::restore() {
  const std::optional<int64_t> at = ropts_.resume_from ? ropts_.resume_from : manager_->latest_step();
  const State all = state(*model_);
  const auto parts = all.split({Param, BatchStat, RngState, Everything()});
  const std::map<std::string, State> templates = {
      {"params", parts[0]}, {"batch_stats", parts[1]}, {"rngs", parts[2]}, {"optimizer", state(*optimizer_)}};
  Composite args;
  for (const auto& item : kCheckpointItems)
    if (item.restored) args.add(item.name, item.is_state ? checkpoint::ItemArgs(StandardRestore(templates.at(item.name)))
                                                         : checkpoint::ItemArgs(JsonRestore()));
  checkpoint::emergency::RestoreOptions ro;
  ro.step = ropts_.resume_from;
  ro.fallback_to_verified = !ropts_.resume_from && cfg_.checkpoint.fallback_to_verified;
  ro.before_persistent_restore = [this](int64_t step) { check_same_model(step); };
  std::optional<checkpoint::emergency::RestoredStep> r;
  try {
    r = tiers_->restore(args, ro);
  } catch (const Error& e) {
    if (ro.fallback_to_verified) throw;
    NNX_CHECK(false, "cannot resume from step ", at.value_or(-1), ": ", e.what(),
              ropts_.resume_from ? std::string() : std::string(" (checkpoint.fallback_to_verified=true resumes from the newest step that restores)"));
  }
  if (!r) return false;
  apply_restored(r->restored, r->step, r->path);
  resumed_local_ = r->from_local_tier;
  return true;
}

void Run::close_tiers() {
  nlohmann::json metrics = {{"step", step_}};
  if (!history_.empty() && history_.back().value("step", int64_t(-1)) == step_) metrics = history_.back();
  tiers_->close([&] {
    NNX_CHECK_IO(params_finite(), "params hold NaN or Inf at step ", step_, "; not saving them. The last checkpoint is intact.");
    return checkpoint_args(step_, batch_stats_to_save(), /*per_rank=*/false);
  }, metrics);
}

void Run::apply_restored(const checkpoint::Restored& r, int64_t at, const std::filesystem::path& from) {
  for (const auto& l : other_differences(r.json_item("config"), cfg_.to_json()))
    log::warn_parts("config changed since step ", at, " (applied): ", l);
  update(*model_, r.state("params"), r.state("batch_stats"), r.state("rngs"));
  update(*optimizer_, r.state("optimizer"));
  set_data_position(r.json_item("data"));
  history_ = r.json_item("metrics");
  step_ = r.json_item("trainer").at("step");
  skipped_ = r.json_item("trainer").value("skipped_steps", 0);
  *progress_ << "nnx-train: resumed from step " << step_ << " (" << from.string() << "): params "
        << r.state("params").size() << " arrays (" << format_bytes(r.state("params").nbytes()) << "), batch_stats "
        << r.state("batch_stats").size() << ", rngs " << r.state("rngs").size() << ", optimizer step "
        << optimizer_->step_count() << ", data position epoch " << loader_->epoch() << " batch " << loader_->index()
        << ", " << history_.size() << " metric records\n";
}

// The loader's position from the checkpoint; at another world size the position in examples.
void Run::set_data_position(const nlohmann::json& d) {
  int64_t index = d.at("index");
  const int64_t saved_global = d.value("global_batch", global_batch_);
  if (saved_global != global_batch_) {
    const int64_t examples = index * saved_global;
    index = examples / global_batch_;
    if (examples % global_batch_)
      log::warn_parts("global batch changed ", saved_global, " -> ", global_batch_, "; resuming at example ",
                      index * global_batch_, " of the epoch instead of ", examples);
  }
  loader_->set_position(d.at("epoch"), std::min(index, loader_->batches_per_epoch()));
}

// --init-from (a PyTorch state dict or safetensors file; or a whole training state, e.g. from
// an Orbax checkpoint through nnx-ckpt import-orbax): returns true when the run ends here
// (import only).
bool Run::import_initial_state() {
  if (ropts_.init_from.empty()) return false;
  NNX_CHECK(!resumed_, "'", cfg_.run_dir, "' already has checkpoints; --init-from initialises fresh runs only");
  const NamedTensors named = read_named_tensors(ropts_.init_from);
  const std::string source = ropts_.init_from_name.empty() ? ropts_.init_from : ropts_.init_from_name;
  int64_t at = 0;
  if (is_full_state(named)) {
    at = load_full_state(*model_, *optimizer_, named, source);
    step_ = at;  // the source's step: the schedule and the step counter go on from it
  } else {
    NNX_CHECK(!ropts_.init_mapping.empty(), "--init-from ", ropts_.init_from, " needs --mapping MAP.json (docs/interop.md)");
    load_params(*model_, named, ropts_.init_from, ropts_.init_mapping);
  }
  if (pg_) distributed::broadcast_state(*model_, *pg_);
  *progress_ << "nnx-train: " << (at ? "state" : "params") << " initialised from " << source
             << (at ? " at step " + std::to_string(at) : std::string()) << "\n";
  if (!ropts_.import_only) return false;
  save(at, nlohmann::json::object(), /*force=*/true, params_finite());
  manager_->wait_until_finished();
  // The command that fine-tunes from it: the same config and overrides (a model override left
  // out would build another model), shell-quoted where needed.
  auto quoted = [](const std::string& a) {
    const bool plain = a.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.,=/:+-") == std::string::npos;
    return plain ? a : "'" + a + "'";
  };
  std::string cmd = "nnx-train --config " + quoted(cfg_.source);
  for (const auto& o : cfg_.overrides)
    if (o.rfind("run.dir=", 0) != 0) cmd += " " + quoted(o);
  *out_ << "nnx-train: wrote " << manager_->step_path(at).string() << "; `" << cmd << " " << quoted("run.dir=" + cfg_.run_dir)
        << "` fine-tunes from it\n";
  return true;
}

std::optional<at::ScalarType> Run::autocast_dtype() const {
  if (cfg_.train.autocast == "bfloat16") return at::kBFloat16;
  return std::nullopt;
}

std::pair<double, bool> Run::step() {
  zero_grad(*model_, /*set_to_none=*/false);  // reuse the gradient buffers step after step
  double loss_value = 0;
  for (int64_t micro = 0; micro < cfg_.train.grad_accum_steps; ++micro) {
    auto b = loader_->next();
    auto x = b.inputs.to(device_), y = b.targets.to(device_);
    if (cfg_.model.dtype == "bfloat16" && x.is_floating_point()) x = x.to(at::kBFloat16);
    at::Tensor logits;
    {
      compat::AutocastGuard autocast(device_.type(), autocast_dtype());
      logits = model_->forward(x);
    }
    auto loss = loss_fn(logits.to(at::kFloat), y);
    if (cfg_.train.grad_accum_steps > 1) loss = loss / static_cast<double>(cfg_.train.grad_accum_steps);
    if (step_ + 1 == ropts_.inject_nonfinite_at_step) loss = loss * std::nan("");
    if (reducer_ && micro + 1 == cfg_.train.grad_accum_steps) reducer_->arm();  // reduce as the last backward runs
    loss.backward();
    loss_value += loss.item<double>();
    window_examples_ += x.size(0);
  }
  if (reducer_) reducer_->finish();
  State g = grads(*model_);
  if (pg_) {
    if (!reducer_) distributed::all_reduce_mean(g, *pg_);
    std::vector<at::Tensor> v = {at::tensor({loss_value}, at::kDouble)};  // the mean loss
    pg_->all_reduce_sum(v);
    loss_value = v[0][0].item<double>() / env_.world_size;
    if (cfg_.distributed.batch_stats == "sync") {
      State stats = state(*model_, BatchStat);
      if (!stats.empty()) distributed::all_reduce_mean(stats, *pg_);
    }
  }
  bool finite = std::isfinite(loss_value);
  if (finite) {  // one pass and one sync: a NaN or Inf anywhere makes the sum of norms non-finite
    std::vector<at::Tensor> gs;
    for (const auto& [p, vs] : g) gs.push_back(vs.value);
    finite = at::stack(at::_foreach_norm(gs, 2)).sum().isfinite().item<bool>();
  }
  if (finite) {
    optimizer_->update(g);
  } else if (cfg_.train.nonfinite == "stop") {
    NNX_CHECK_IO(false, "non-finite loss or gradient at step ", step_ + 1, " (loss ", loss_value,
                 "); stopping without saving (train.nonfinite = stop). The last checkpoint is intact.");
  } else {
    ++skipped_;
    log::warn_parts("non-finite loss or gradient at step ", step_ + 1, "; step skipped");
  }
  return {loss_value, finite};
}

std::pair<double, double> Run::evaluate() {
  model_->eval();
  c10::NoGradGuard ng;
  double loss_sum = 0, correct = 0, tokens = 0;
  const int64_t n = ds_.eval->size();
  int64_t batches = 0;
  for (int64_t start = 0; start < n; start += cfg_.eval.batch_size) {
    if (cfg_.eval.max_batches > 0 && batches++ >= cfg_.eval.max_batches) break;
    auto b = ds_.eval->get_batch(at::arange(start, std::min(n, start + cfg_.eval.batch_size), at::kLong));
    auto x = b.inputs.to(device_), y = b.targets.to(device_);
    if (cfg_.model.dtype == "bfloat16" && x.is_floating_point()) x = x.to(at::kBFloat16);
    at::Tensor logits;
    {
      compat::AutocastGuard autocast(device_.type(), autocast_dtype());
      logits = model_->forward(x).to(at::kFloat);
    }
    auto flat = logits.dim() == 3 ? logits.reshape({-1, logits.size(-1)}) : logits;
    auto ty = y.reshape({-1});
    loss_sum += at::cross_entropy_loss(flat, ty, {}, at::Reduction::Sum).item<double>();
    correct += flat.argmax(1).eq(ty).sum().item<double>();
    tokens += static_cast<double>(ty.numel());
  }
  model_->train();
  return {loss_sum / std::max(tokens, 1.0), correct / std::max(tokens, 1.0)};
}

namespace {
// `s` with its sharding annotations dropped (tensors shared): in the local tier each rank's
// ZeRO-1 rows are a plain array of that rank's, not a piece of a global one. A restore into the
// sharded template reads them back whole (the tier's manager is a single rank's).
State local_arrays(State s) {
  for (auto& [path, vs] : s) vs.metadata.erase(kShardingKey);
  return s;
}
}  // namespace

// The checkpoint's items at `at_step`. With distributed.batch_stats local, the persistent tier
// holds rank 0's statistics (a copy; each rank keeps its own), the local tier (`per_rank`) each
// rank's own.
State Run::batch_stats_to_save() {
  State stats = state(*model_, BatchStat);
  if (!pg_ || cfg_.distributed.batch_stats != "local") return stats;  // equal on every rank (sync), or one rank
  stats = stats.clone();  // the model keeps its own
  for (auto& [p, vs] : stats) {
    std::vector<at::Tensor> one = {vs.value};
    pg_->broadcast(one, 0);
  }
  return stats;
}

checkpoint::Composite Run::checkpoint_args(int64_t at_step, const State& batch_stats, bool per_rank) {
  auto parts = state(*model_).split({Param, RngState, Everything()});
  const std::map<std::string, State> states = {{"params", parts[0]},
                                               {"batch_stats", batch_stats},
                                               {"rngs", parts[1]},
                                               {"optimizer", per_rank && zero1_ ? local_arrays(state(*optimizer_)) : state(*optimizer_)}};
  const std::map<std::string, nlohmann::json> json = {
      {"data", nlohmann::json{{"epoch", loader_->epoch()}, {"index", loader_->index()}, {"global_batch", global_batch_}}},
      {"config", cfg_.to_json()},
      {"metrics", history_},
      {"trainer", nlohmann::json{{"step", at_step}, {"skipped_steps", skipped_}, {"optimizer_step", optimizer_->step_count()}}},
      {"graphdef", graphdef(*model_).to_json()}};
  Composite args;
  for (const auto& item : kCheckpointItems)
    args.add(item.name, item.is_state ? checkpoint::ItemArgs(StandardSave(states.at(item.name)))
                                      : checkpoint::ItemArgs(JsonSave(json.at(item.name))));
  return args;
}

bool Run::params_finite() const {
  std::vector<at::Tensor> ps;
  for (const auto& [p, vs] : state(*model_, Param))
    if (vs.value.is_floating_point()) ps.push_back(vs.value.detach());
  return ps.empty() || at::stack(at::_foreach_norm(ps, 2)).sum().isfinite().item<bool>();
}

void Run::save(int64_t at_step, const nlohmann::json& metrics, bool force, bool params_ok) {
  // Non-finite params are never written: stop with the last good checkpoint intact.
  NNX_CHECK_IO(params_ok, "params hold NaN or Inf at step ", at_step, "; not saving them. The last checkpoint is intact.");
  const State stats = batch_stats_to_save();  // a collective with batch_stats: local
  manager_->save(at_step, checkpoint_args(at_step, stats, /*per_rank=*/false), metrics, force);
}

// Logs (and evaluates) when due: the metrics record, appended to metrics.jsonl and printed.
nlohmann::json Run::report_step(double loss) {
  const bool log_now = step_ % cfg_.train.log_every == 0 || step_ == cfg_.train.max_steps;
  const bool eval_now = (cfg_.eval.every_steps > 0 && step_ % cfg_.eval.every_steps == 0) || step_ == cfg_.train.max_steps;
  if (!log_now && !eval_now) return nullptr;
  const double secs = std::chrono::duration<double>(Clock::now() - window_start_).count();
  nlohmann::json rec = {{"step", step_}, {"loss", loss}, {"learning_rate", optimizer_->learning_rate()},
                        {"epoch", loader_->epoch()}, {"examples_per_sec", secs > 0 ? window_examples_ / secs : 0.0}};
  if (skipped_) rec["skipped_steps"] = skipped_;
  if (eval_now && lead_) {
    auto [el, ea] = evaluate();
    rec["eval_loss"] = el;
    rec["eval_accuracy"] = ea;
  }
  history_.push_back(rec);
  if (lead_) std::ofstream(metrics_path_, std::ios::app) << rec.dump() << "\n";
  const double rate = secs > 0 ? window_steps_ / secs : 0;  // steps per second
  const double eta = rate > 0 ? (cfg_.train.max_steps - step_) / rate : NAN;
  std::ostringstream line;
  line << "step " << step_ << "/" << cfg_.train.max_steps << " loss " << std::fixed << std::setprecision(4) << loss << " "
       << std::setprecision(0) << rec["examples_per_sec"].get<double>() << " ex/s ETA " << format_duration(eta);
  if (eval_now && lead_)
    line << " eval_loss " << std::setprecision(4) << rec["eval_loss"].get<double>() << " eval_accuracy "
         << rec["eval_accuracy"].get<double>();
  if (lead_ && !ropts_.quiet && ::isatty(STDERR_FILENO)) std::cerr << "\r" << line.str() << (eval_now ? "\n" : "") << std::flush;
  else if (lead_ && !ropts_.quiet) std::cout << line.str() << std::endl;
  window_start_ = Clock::now();
  window_examples_ = window_steps_ = 0;
  return rec;
}

// Saves when the manager's policy (or the last step, or a preemption) says so; returns false
// when a preemption stops the run. With several ranks should_save() agrees the decision (and a
// preemption seen by any rank) across them, so every rank saves the same steps.
bool Run::after_step(double loss, bool finite) {
  const nlohmann::json rec = report_step(loss);
  const bool save_now = manager_->should_save(step_);
  const bool preempted = manager_->reached_preemption(step_);
  const bool persistent_due = save_now || step_ == cfg_.train.max_steps || preempted;
  const bool local_due = tiers_->local_due(step_);
  // One check (a sync on a GPU) for both tiers' saves of this step.
  const bool params_ok = (persistent_due || local_due) && params_finite();
  // Non-finite params are never written: the local tier skips this step on every rank (its
  // agreement is still collective), the persistent save stops the run with the last good
  // checkpoint intact.
  checkpoint::emergency::TierArgs args;
  if (local_due && params_ok) args.local = checkpoint_args(step_, state(*model_, BatchStat), /*per_rank=*/true);
  if (persistent_due && params_ok) args.persistent = checkpoint_args(step_, batch_stats_to_save(), /*per_rank=*/false);
  nlohmann::json metrics = rec.is_null() ? nlohmann::json{{"step", step_}, {"loss", loss}} : rec;
  if (!finite) metrics.erase("eval_loss");  // non-finite state never counts as best
  // Unforced when the policy asked for it: the manager may skip it (busy_policy: skip).
  tiers_->save(step_, args, metrics, /*force=*/!save_now || step_ == cfg_.train.max_steps || preempted);
  NNX_CHECK_IO(!persistent_due || params_ok, "params hold NaN or Inf at step ", step_,
               "; not saving them. The last checkpoint is intact.");
  if (preempted) {
    tiers_->stop();  // waits; every rank stops its replicas here (the decision is agreed)
    if (::isatty(STDERR_FILENO)) std::cerr << "\n";
    *out_ << "nnx-train: stopped by signal " << checkpoint::preemption_signal() << " at step " << step_ << "; saved to "
          << manager_->step_path(step_).string() << ". Run the same command to resume.\n";
    return false;
  }
  if (step_ == ropts_.crash_after_step && (ropts_.crash_rank < 0 || ropts_.crash_rank == env_.rank)) {
    tiers_->local().wait_for_replicas();  // the test hook kills after a replica, not during one (a SIGKILL from outside can)
    ::raise(SIGKILL);
  }
  return true;
}

void Run::report_start() const {
  *progress_ << "nnx-train: " << model_->type_name() << " with " << state(*model_, Param).size() << " param arrays ("
        << format_bytes(state(*model_, Param).nbytes()) << "), " << ds_.train->size() << " training examples, "
        << loader_->batches_per_epoch() << " batches/epoch, device " << device_.str() << ", threads "
        << at::get_num_threads()
        << (env_.world_size > 1 ? ", world_size " + std::to_string(env_.world_size) + " over " + distributed::backend_name(backend_)
                                : std::string())
        << (zero1_ ? ", ZeRO-1 optimizer state " + format_bytes(state(*optimizer_).nbytes()) + " on this rank" : std::string())
        << "\n";
}

void Run::report_done() const {
  if (::isatty(STDERR_FILENO)) std::cerr << "\n";
  const double total = std::chrono::duration<double>(Clock::now() - t_start_).count();
  const auto& last = history_.back();
  *out_ << "nnx-train: done: step " << step_ << " (" << step_ - first_step_ << " this run, " << skipped_ << " skipped) in "
        << format_duration(total) << ", loss " << last_loss_;
  if (last.contains("eval_accuracy"))
    *out_ << ", eval_loss " << last["eval_loss"].get<double>() << ", eval_accuracy " << last["eval_accuracy"].get<double>();
  const auto& local = tiers_->local();
  if (local.configured())
    *out_ << "\nnnx-train: local tier" << (env_.world_size > 1 ? " (rank 0)" : "") << ": " << local.saves_written() << " of "
          << local.saves_due() << " due saves written, " << local.saves_skipped()
          << " skipped while the previous one was still being written";
  *out_ << "\nnnx-train: checkpoints in " << manager_->directory().string() << " (latest " << *manager_->latest_step();
  if (lead_)  // rank 0 may still be applying retention; other ranks do not read steps here
    if (auto b = manager_->best_step()) *out_ << ", best " << *b;
  *out_ << "), metrics in " << metrics_path_.string() << "\n";
}

int Run::execute() {
  resumed_ = restore();
  tiers_->discard_newer_than(resumed_ ? step_ : -1);
  if (lead_) write_metrics_file(metrics_path_, history_);  // drops records newer than the resumed step
  // Every rank starts from rank 0's state; after a local-tier restore each rank has its own.
  if (pg_ && !resumed_local_) distributed::broadcast_state(*model_, *pg_);
  const bool imported_only = import_initial_state();
  // After the manager took the run's lock, the checkpoint accepted this config and an import
  // fitted the model: a refused run leaves the run's config.json alone (or writes none).
  write_resolved_config();
  if (imported_only) return 0;
  if (step_ >= cfg_.train.max_steps) {
    *out_ << "nnx-train: already at step " << step_ << " (train.max_steps = " << cfg_.train.max_steps << "); nothing to do\n";
    close_tiers();  // a finished run keeps no local tier
    return 0;
  }
  report_start();
  first_step_ = step_;
  window_start_ = Clock::now();
  model_->train();
  while (step_ < cfg_.train.max_steps) {
    const auto [loss, finite] = step();
    ++step_;
    ++window_steps_;
    last_loss_ = loss;
    if (!after_step(loss, finite)) return 0;
  }
  close_tiers();  // the run finished: the persistent tier holds its last step; no local tier is kept
  report_done();
  return 0;
}

}  // namespace nnx::trainer
