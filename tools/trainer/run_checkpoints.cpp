#include "nnx/trainer/run_checkpoints.h"

#include <ATen/ATen.h>
#include <signal.h>
#include <unistd.h>

#include <iostream>

#include "nnx/checkpoint/emergency/checkpoint_manager.h"
#include "nnx/checkpoint/emergency/local_tier.h"
#include "nnx/checkpoint/manager.h"
#include "nnx/checkpoint/preemption.h"
#include "nnx/framework/graph.h"
#include "nnx/framework/log.h"
#include "nnx/framework/sharding.h"
#include "nnx/trainer/checkpoint_options.h"
#include "nnx/trainer/torch_import.h"

namespace nnx::trainer {

namespace stdfs = std::filesystem;
using checkpoint::Composite;
using checkpoint::JsonRestore;
using checkpoint::JsonSave;
using checkpoint::StandardRestore;
using checkpoint::StandardSave;

RunCheckpoints::RunCheckpoints(const RunContext& ctx, TrainState& state) : ctx_(ctx), state_(state) {
  const Config& cfg = ctx_.cfg;
  {
    std::error_code ec;  // a run.dir that cannot be made is a config error (exit 2), named as such
    stdfs::create_directories(cfg.run_dir, ec);
    NNX_CHECK(!ec, "run.dir '", cfg.run_dir, "' (", cfg.run_dir_origin, "): cannot create it: ", ec.message());
  }
  checkpoint::emergency::CheckpointManagerOptions mo;
  mo.persistent = manager_options(cfg.checkpoint);
  mo.persistent.process_group = ctx_.ckpt_pg;
  mo.local = cfg.checkpoint.local;
  if (mo.local.directory.empty()) mo.local.directory = checkpoint::emergency::default_local_directory(cfg.run_dir).string();
  tiers_ = std::make_unique<checkpoint::emergency::CheckpointManager>(stdfs::path(cfg.run_dir) / "checkpoints", mo, ctx_.pg);
}

RunCheckpoints::~RunCheckpoints() = default;

checkpoint::CheckpointManager& RunCheckpoints::persistent() { return tiers_->persistent(); }

// A changed model is reported as such (its GraphDef against the checkpoint's), before the
// restore would fail on a shape. A checkpoint whose GraphDef cannot be read is left to the
// restore, which reports it (or falls back from it).
void RunCheckpoints::check_same_model(int64_t at) {
  const auto& manager = tiers_->persistent();
  nlohmann::json saved;
  try {
    saved = manager.restore(at, Composite{{"graphdef", JsonRestore()}}).json_item("graphdef");
  } catch (const Error&) {
    return;
  }
  const nlohmann::json& now = state_.graphdef;
  if (saved == now) return;
  std::string list;
  try {  // the config keys behind it, where the checkpoint's config reads
    const auto saved_config = manager.restore(at, Composite{{"config", JsonRestore()}}).json_item("config");
    for (const auto& l : structural_differences(saved_config, ctx_.cfg.to_json())) list += "\n  " + l;
  } catch (const Error&) {
  }
  // Each GraphDef difference cut to a line: a layer added or removed changes whole node lists
  // (several KB of JSON on one line).
  const auto changes = json_differences(saved, now);
  for (size_t i = 0; i < changes.size() && i < 5; ++i)
    list += "\n  graphdef " + (changes[i].size() > 160 ? changes[i].substr(0, 157) + "..." : changes[i]);
  if (changes.size() > 5) list += "\n  ... (" + std::to_string(changes.size() - 5) + " more GraphDef differences)";
  throw ModelChangedError("cannot resume '" + ctx_.cfg.run_dir + "' from step " + std::to_string(at) +
                          ": the model changed since the checkpoint was written (its GraphDef differs):" + list +
                          "\n  use a new run.dir, or restore the original model settings");
}

bool RunCheckpoints::restore() {
  const RunOptions& ropts = ctx_.ropts;
  const std::optional<int64_t> at = ropts.resume_from ? ropts.resume_from : tiers_->latest_step();
  const State all = state(*state_.model);
  const auto parts = all.split({Param, BatchStat, RngState, Everything()});
  const std::map<std::string, State> templates = {
      {"params", parts[0]}, {"batch_stats", parts[1]}, {"rngs", parts[2]}, {"optimizer", state(*state_.optimizer)}};
  Composite args;
  for (const auto& item : kCheckpointItems)
    if (item.restored) args.add(item.name, item.is_state ? checkpoint::ItemArgs(StandardRestore(templates.at(item.name)))
                                                         : checkpoint::ItemArgs(JsonRestore()));
  checkpoint::emergency::RestoreOptions ro;
  ro.step = ropts.resume_from;
  ro.fallback_to_verified = !ropts.resume_from && ctx_.cfg.checkpoint.fallback_to_verified;
  ro.before_persistent_restore = [this](int64_t step) { check_same_model(step); };
  std::optional<checkpoint::emergency::RestoredStep> r;
  try {
    r = tiers_->restore(args, ro);
  } catch (const ModelChangedError&) {
    throw;  // its own message says what to do
  } catch (const Error& e) {
    if (ro.fallback_to_verified) throw;
    NNX_CHECK(false, "cannot resume from step ", at.value_or(-1), ": ", e.what(),
              ropts.resume_from ? std::string() : std::string(" (checkpoint.fallback_to_verified=true resumes from the newest step that restores)"));
  }
  if (r) {
    apply_restored(r->restored, r->step, r->path);
    resumed_local_ = r->from_local_tier;
  }
  return r.has_value();
}

void RunCheckpoints::apply_restored(const checkpoint::Restored& r, int64_t at, const stdfs::path& from) {
  for (const auto& l : other_differences(r.json_item("config"), ctx_.cfg.to_json()))
    log::warn_parts("config changed since step ", at, " (applied): ", l);
  update(*state_.model, r.state("params"), r.state("batch_stats"), r.state("rngs"));
  update(*state_.optimizer, r.state("optimizer"));
  set_data_position(r.json_item("data"));
  state_.history = r.json_item("metrics");
  state_.step = r.json_item("trainer").at("step");
  state_.skipped = r.json_item("trainer").value("skipped_steps", 0);
  *ctx_.progress << "nnx-train: resumed from step " << state_.step << " (" << from.string() << "): params "
                 << r.state("params").size() << " arrays (" << format_bytes(r.state("params").nbytes()) << "), batch_stats "
                 << r.state("batch_stats").size() << ", rngs " << r.state("rngs").size() << ", optimizer step "
                 << state_.optimizer->step_count() << ", data position epoch " << state_.loader->epoch() << " batch "
                 << state_.loader->index() << ", " << state_.history.size() << " metric records\n";
}

// The loader's position from the checkpoint; at another world size the position in examples.
void RunCheckpoints::set_data_position(const nlohmann::json& d) {
  int64_t index = d.at("index");
  const int64_t saved_global = d.value("global_batch", state_.global_batch);
  if (saved_global != state_.global_batch) {
    const int64_t examples = index * saved_global;
    index = examples / state_.global_batch;
    if (examples % state_.global_batch)
      log::warn_parts("global batch changed ", saved_global, " -> ", state_.global_batch, "; resuming at example ",
                      index * state_.global_batch, " of the epoch instead of ", examples);
  }
  state_.loader->set_position(d.at("epoch"), std::min(index, state_.loader->batches_per_epoch()));
}

// --init-from (a PyTorch state dict or safetensors file; or a whole training state, e.g. from
// an Orbax checkpoint through nnx-ckpt import-orbax): returns true when the run ends here
// (import only).
bool RunCheckpoints::import_initial_state(bool resumed) {
  const RunOptions& ropts = ctx_.ropts;
  const Config& cfg = ctx_.cfg;
  if (ropts.init_from.empty()) return false;
  NNX_CHECK(!resumed, "'", cfg.run_dir, "' already has checkpoints; --init-from initialises fresh runs only");
  NNX_CHECK(!state_.zero3, "--init-from with distributed.zero_stage 3 is not built: import at zero_stage 0 (or 1), "
            "then resume the run with zero_stage 3");
  const NamedTensors named = read_named_tensors(ropts.init_from);
  const std::string source = ropts.init_from_name.empty() ? ropts.init_from : ropts.init_from_name;
  int64_t at = 0;
  if (is_full_state(named)) {
    at = load_full_state(*state_.model, *state_.optimizer, named, source);
    state_.step = at;  // the source's step: the schedule and the step counter go on from it
  } else {
    NNX_CHECK(!ropts.init_mapping.empty(), "--init-from ", ropts.init_from, " needs --mapping MAP.json (docs/interop.md)");
    load_params(*state_.model, named, ropts.init_from, ropts.init_mapping);
  }
  if (ctx_.pg) distributed::broadcast_state(*state_.model, *ctx_.pg);
  *ctx_.progress << "nnx-train: " << (at ? "state" : "params") << " initialised from " << source
                 << (at ? " at step " + std::to_string(at) : std::string()) << "\n";
  if (!ropts.import_only) return false;
  save_now(at);
  // The command that fine-tunes from it: the same config and overrides (a model override left
  // out would build another model), shell-quoted where needed.
  auto quoted = [](const std::string& a) {
    const bool plain = a.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.,=/:+-") == std::string::npos;
    return plain ? a : "'" + a + "'";
  };
  std::string cmd = "nnx-train --config " + quoted(cfg.source);
  for (const auto& o : cfg.overrides)
    if (o.rfind("run.dir=", 0) != 0) cmd += " " + quoted(o);
  *ctx_.out << "nnx-train: wrote " << persistent().step_path(at).string() << "; `" << cmd << " "
            << quoted("run.dir=" + cfg.run_dir) << "` fine-tunes from it\n";
  return true;
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

// With distributed.batch_stats local, the persistent tier holds rank 0's statistics (a copy;
// each rank keeps its own), the local tier each rank's own.
State RunCheckpoints::batch_stats_to_save() {
  State stats = state(*state_.model, BatchStat);
  if (!ctx_.pg || ctx_.cfg.distributed.batch_stats != BatchStatsMode::kLocal) return stats;  // equal on every rank (sync), or one rank
  stats = stats.clone();  // the model keeps its own
  for (auto& [p, vs] : stats) {
    std::vector<at::Tensor> one = {vs.value};
    ctx_.pg->broadcast(one, 0);
  }
  return stats;
}

checkpoint::Composite RunCheckpoints::checkpoint_args(int64_t at_step, const State& batch_stats, bool per_rank) {
  const TrainState& s = state_;
  auto parts = state(*s.model).split({Param, RngState, Everything()});
  const bool rows = per_rank && (s.zero1 || s.zero3);  // the local tier holds this rank's rows as plain arrays
  const std::map<std::string, State> states = {{"params", per_rank && s.zero3 ? local_arrays(parts[0]) : parts[0]},
                                               {"batch_stats", batch_stats},
                                               {"rngs", parts[1]},
                                               {"optimizer", rows ? local_arrays(state(*s.optimizer)) : state(*s.optimizer)}};
  const std::map<std::string, nlohmann::json> json = {
      {"data", nlohmann::json{{"epoch", s.loader->epoch()}, {"index", s.loader->index()}, {"global_batch", s.global_batch}}},
      {"config", ctx_.cfg.to_json()},
      {"metrics", s.history},
      {"trainer", nlohmann::json{{"step", at_step}, {"skipped_steps", s.skipped}, {"optimizer_step", s.optimizer->step_count()}}},
      {"graphdef", s.graphdef}};
  Composite args;
  for (const auto& item : kCheckpointItems)
    args.add(item.name, item.is_state ? checkpoint::ItemArgs(StandardSave(states.at(item.name)))
                                      : checkpoint::ItemArgs(JsonSave(json.at(item.name))));
  return args;
}

namespace {
// Non-finite params are never written: the run stops with the last good checkpoint intact.
void require_finite(bool params_ok, int64_t step) {
  NNX_CHECK_IO(params_ok, "params hold NaN or Inf at step ", step, "; not saving them. The last checkpoint is intact.");
}
}  // namespace

bool RunCheckpoints::params_finite() const {
  std::vector<at::Tensor> ps;
  for (const auto& [p, vs] : state(*state_.model, Param))
    if (vs.value.is_floating_point()) ps.push_back(vs.value.detach());
  return ps.empty() || at::stack(at::_foreach_norm(ps, 2)).sum().isfinite().item<bool>();
}

void RunCheckpoints::save_now(int64_t at_step) {
  require_finite(params_finite(), at_step);
  const State stats = batch_stats_to_save();  // a collective with batch_stats: local
  persistent().save(at_step, checkpoint_args(at_step, stats, /*per_rank=*/false), nlohmann::json::object(), /*force=*/true);
  persistent().wait_until_finished();
}

// With several ranks should_save() agrees the decision (and a preemption seen by any rank)
// across them, so every rank saves the same steps.
bool RunCheckpoints::save_due(const nlohmann::json& rec, double loss, bool finite) {
  const int64_t step = state_.step, max_steps = ctx_.cfg.train.max_steps;
  const bool save_now = tiers_->should_save(step);
  const bool preempted = tiers_->reached_preemption(step);
  const bool persistent_due = save_now || step == max_steps || preempted;
  const bool local_due = tiers_->local_due(step);
  // One check (a sync on a GPU) for both tiers' saves of this step.
  const bool params_ok = (persistent_due || local_due) && params_finite();
  // Non-finite params are never written: the local tier skips this step on every rank (its
  // agreement is still collective), the persistent save stops the run with the last good
  // checkpoint intact.
  checkpoint::emergency::TierArgs args;
  if (local_due && params_ok) args.local = checkpoint_args(step, state(*state_.model, BatchStat), /*per_rank=*/true);
  if (persistent_due && params_ok) args.persistent = checkpoint_args(step, batch_stats_to_save(), /*per_rank=*/false);
  nlohmann::json metrics = rec.is_null() ? nlohmann::json{{"step", step}, {"loss", loss}} : rec;
  if (!finite) metrics.erase("eval_loss");  // non-finite state never counts as best
  // Unforced when the policy asked for it: the manager may skip it (busy_policy: skip).
  tiers_->save(step, args, metrics, /*force=*/!save_now || step == max_steps || preempted);
  require_finite(!persistent_due || params_ok, step);
  if (preempted) {
    tiers_->stop();  // waits; every rank stops its replicas here (the decision is agreed)
    if (::isatty(STDERR_FILENO)) std::cerr << "\n";
    *ctx_.out << "nnx-train: stopped by signal " << checkpoint::preemption_signal() << " at step " << step << "; saved to "
              << persistent().step_path(step).string() << ". Run the same command to resume.\n";
    return true;
  }
  const RunOptions& ropts = ctx_.ropts;
  if (step == ropts.crash_after_step && (ropts.crash_rank < 0 || ropts.crash_rank == ctx_.env.rank)) {
    tiers_->local().wait_for_replicas();  // the test hook kills after a replica, not during one (a SIGKILL from outside can)
    ::raise(SIGKILL);
  }
  return false;
}

void RunCheckpoints::close() {
  nlohmann::json metrics = {{"step", state_.step}};
  if (!state_.history.empty() && state_.history.back().value("step", int64_t(-1)) == state_.step) metrics = state_.history.back();
  const auto saved = tiers_->close([&](int64_t step) {
    require_finite(params_finite(), step);
    return checkpoint_args(step, batch_stats_to_save(), /*per_rank=*/false);
  }, metrics);
  if (saved)
    *ctx_.out << "nnx-train: step " << *saved << " was only in the local tier; saved to " << persistent().step_path(*saved).string()
              << "\n";
}

}  // namespace nnx::trainer
