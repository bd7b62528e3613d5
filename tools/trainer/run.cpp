#include "nnx/trainer/run.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include <cmath>
#include <iostream>

#include "nnx/framework/blas.h"
#include "nnx/framework/compat.h"
#include "nnx/framework/graph.h"
#include "nnx/framework/host_memory.h"
#include "nnx/framework/log.h"

namespace nnx::trainer {

namespace {

at::Tensor loss_fn(const at::Tensor& logits, const at::Tensor& targets) {
  if (logits.dim() == 3) return at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}));
  return at::cross_entropy_loss(logits, targets);
}

}  // namespace

Run::Run(const Config& cfg, const RunOptions& ropts)
    : cfg_(cfg), ctx_(cfg, ropts), device_(c10::kCPU) {
  ctx_.out = &std::cout;
  keep_freed_memory();
  use_huge_pages_for_large_tensors();  // before the model and the restore allocate the state
  if (cfg_.threads > 0) {  // the BLAS's own pool too (OpenBLAS ignores at::set_num_threads)
    at::set_num_threads(cfg_.threads);
    set_blas_num_threads(cfg_.threads);
  }
  if (blas_is_reference())
    log::warn_parts("the reference BLAS (", blas_library_path(),
                    ") is active; matmuls run ~25x slower. Run tools/setup.sh to select OpenBLAS.");
  // The device before the process group: distributed.backend auto means NCCL for a CUDA device.
  ctx_.env = distributed::env_from_environment();
  log::configure("nnx-train", ctx_.env.rank, ctx_.env.world_size);
  if (!cfg_.log_level.empty()) log::set_level(log::level_from_string(cfg_.log_level));
  device_ = compat::training_device(cfg_.device, ctx_.env.local_rank);  // each rank on its LOCAL_RANK's GPU
  compat::set_current_device(device_);
  build_distributed();
  compat::set_cudnn_flags(cfg_.cudnn.benchmark, cfg_.cudnn.deterministic);
  ds_ = load_data(cfg_);
  build_model(ds_);
  build_optimizer();
  build_loader();
  checkpoints_ = std::make_unique<RunCheckpoints>(ctx_, state_);
  report_ = std::make_unique<RunReport>(ctx_, state_, t_start_);
}

Run::~Run() = default;

at::Tensor Run::forward(const at::Tensor& x) { return fsdp_ ? fsdp_->forward(x) : state_.model->forward(x); }

std::optional<at::ScalarType> Run::autocast_dtype() const {
  if (cfg_.train.autocast == Autocast::kBFloat16) return at::kBFloat16;
  return std::nullopt;
}

std::pair<double, bool> Run::step() {
  zero_grad(*state_.model, /*set_to_none=*/false);  // reuse the gradient buffers step after step
  double loss_value = 0;
  for (int64_t micro = 0; micro < cfg_.train.grad_accum_steps; ++micro) {
    auto b = state_.loader->next();
    auto x = b.inputs.to(device_), y = b.targets.to(device_);
    if (cfg_.model.dtype == ParamDType::kBFloat16 && x.is_floating_point()) x = x.to(at::kBFloat16);
    at::Tensor logits;
    {
      compat::AutocastGuard autocast(device_.type(), autocast_dtype());
      logits = forward(x);
    }
    auto loss = loss_fn(logits.to(at::kFloat), y);
    if (cfg_.train.grad_accum_steps > 1) loss = loss / static_cast<double>(cfg_.train.grad_accum_steps);
    if (state_.step + 1 == ctx_.ropts.inject_nonfinite_at_step) loss = loss * std::nan("");
    if (reducer_ && micro + 1 == cfg_.train.grad_accum_steps) reducer_->arm();  // reduce as the last backward runs
    loss.backward();
    loss_value += loss.item<double>();
    report_->count_examples(x.size(0));
  }
  if (reducer_) reducer_->finish();
  State g = grads(*state_.model);
  if (ctx_.pg) {
    if (!reducer_ && !state_.zero3) distributed::all_reduce_mean(g, *ctx_.pg);
    std::vector<at::Tensor> v = {at::tensor({loss_value}, at::kDouble)};  // the mean loss
    ctx_.pg->all_reduce_sum(v);
    loss_value = v[0][0].item<double>() / ctx_.env.world_size;
    sync_batch_stats();
  }
  bool finite = std::isfinite(loss_value);
  if (finite) {  // one pass and one sync: a NaN or Inf anywhere makes the sum of norms non-finite
    std::vector<at::Tensor> gs;
    for (const auto& [p, vs] : g) gs.push_back(vs.value);
    finite = at::stack(at::_foreach_norm(gs, 2)).sum().isfinite().item<bool>();
  }
  if (state_.zero3) {  // each rank sees its rows only: every rank skips (or stops) alike
    std::vector<at::Tensor> bad = {at::tensor({finite ? 0.0 : 1.0}, at::kDouble)};
    ctx_.pg->all_reduce_max(bad);
    finite = bad[0][0].item<double>() == 0;
  }
  if (finite) {
    state_.optimizer->update(g);
  } else if (cfg_.train.nonfinite == Nonfinite::kStop) {
    NNX_CHECK_IO(false, "non-finite loss or gradient at step ", state_.step + 1, " (loss ", loss_value,
                 "); stopping without saving (train.nonfinite = stop). The last checkpoint is intact.");
  } else {
    ++state_.skipped;
    log::warn_parts("non-finite loss or gradient at step ", state_.step + 1, "; step skipped");
  }
  return {loss_value, finite};
}

void Run::sync_batch_stats() {
  if (!ctx_.pg || cfg_.distributed.batch_stats != BatchStatsMode::kSync) return;
  State stats = state(*state_.model, BatchStat);
  if (!stats.empty()) distributed::all_reduce_mean(stats, *ctx_.pg);
}

std::pair<double, double> Run::evaluate() {
  Module& model = *state_.model;
  model.eval();
  c10::NoGradGuard ng;
  double loss_sum = 0, correct = 0, tokens = 0;
  const int64_t n = ds_.eval->size();
  int64_t batches = 0;
  for (int64_t start = 0; start < n; start += cfg_.eval.batch_size) {
    if (cfg_.eval.max_batches > 0 && batches++ >= cfg_.eval.max_batches) break;
    auto b = ds_.eval->get_batch(at::arange(start, std::min(n, start + cfg_.eval.batch_size), at::kLong));
    auto x = b.inputs.to(device_), y = b.targets.to(device_);
    if (cfg_.model.dtype == ParamDType::kBFloat16 && x.is_floating_point()) x = x.to(at::kBFloat16);
    at::Tensor logits;
    {
      compat::AutocastGuard autocast(device_.type(), autocast_dtype());
      logits = forward(x).to(at::kFloat);
    }
    auto flat = logits.dim() == 3 ? logits.reshape({-1, logits.size(-1)}) : logits;
    auto ty = y.reshape({-1});
    loss_sum += at::cross_entropy_loss(flat, ty, {}, at::Reduction::Sum).item<double>();
    correct += flat.argmax(1).eq(ty).sum().item<double>();
    tokens += static_cast<double>(ty.numel());
  }
  model.train();
  return {loss_sum / std::max(tokens, 1.0), correct / std::max(tokens, 1.0)};
}

std::string Run::describe() const {
  const Module& model = *state_.model;
  const distributed::Env& env = ctx_.env;
  std::ostringstream os;
  os << model.type_name() << " with " << state(model, Param).size() << " param arrays (" << format_bytes(state(model, Param).nbytes())
     << "), " << ds_.train->size() << " training examples, " << state_.loader->batches_per_epoch() << " batches/epoch, device "
     << device_.str() << ", threads " << at::get_num_threads()
     << (env.world_size > 1 ? ", world_size " + std::to_string(env.world_size) + " over " + distributed::backend_name(backend_)
                            : std::string())
     << (state_.zero1 ? ", ZeRO-1 optimizer state " + format_bytes(state(*state_.optimizer).nbytes()) + " on this rank" : std::string())
     << (state_.zero3 ? ", ZeRO-3 (" + std::to_string(fsdp_->unit_paths().size()) + " units): params and optimizer state " +
                            format_bytes(state(model, Param).nbytes() + state(*state_.optimizer).nbytes()) + " on this rank"
                      : std::string());
  return os.str();
}

int Run::execute() {
  const bool resumed = checkpoints_->restore();
  report_->rewrite_metrics_file();  // drops records newer than the resumed step
  // Every rank starts from rank 0's state; after a local-tier restore each rank has its own.
  // ZeRO-3's ranks hold different rows, each built from the seed or read from the checkpoint.
  if (ctx_.pg && !checkpoints_->resumed_local() && !state_.zero3) distributed::broadcast_state(*state_.model, *ctx_.pg);
  const bool imported_only = checkpoints_->import_initial_state(resumed);
  // After the manager took the run's lock, the checkpoint accepted this config and an import
  // fitted the model: a refused run leaves the run's config.json alone (or writes none).
  write_resolved_config();
  if (imported_only) return 0;
  if (state_.step >= cfg_.train.max_steps) {
    *ctx_.out << "nnx-train: already at step " << state_.step << " (train.max_steps = " << cfg_.train.max_steps
              << "); nothing to do\n";
    checkpoints_->close();  // a finished run keeps no local tier
    return 0;
  }
  report_->start(describe());
  state_.model->train();
  while (state_.step < cfg_.train.max_steps) {
    const auto [loss, finite] = step();
    ++state_.step;
    report_->count_step(loss);
    const nlohmann::json rec = report_->record_step(loss, [this] { return evaluate(); });
    if (checkpoints_->save_due(rec, loss, finite)) return 0;  // preempted: saved, stopped
  }
  checkpoints_->close();  // the run finished: the persistent tier holds its last step; no local tier is kept
  const distributed::GatherStats gathers = fsdp_ ? fsdp_->gather_stats() : distributed::GatherStats{};
  report_->done(checkpoints_->tiers(), fsdp_ ? &gathers : nullptr);
  return 0;
}

}  // namespace nnx::trainer
