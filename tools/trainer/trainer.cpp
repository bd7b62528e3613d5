#include "tools/trainer/trainer.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <malloc.h>
#include <unistd.h>
#include <signal.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <set>

#include "checkpoint/manager.h"
#include "framework/blas.h"
#include "framework/compat.h"
#include "framework/data/dataset.h"
#include "framework/data/loader.h"
#include "framework/distributed.h"
#include "framework/graph.h"
#include "framework/log.h"
#include "models/models.h"
#include "optim/optimizer.h"
#include "tools/trainer/checkpoint_options.h"

#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/import_read.h>
#include <torch/csrc/jit/serialization/pickle.h>

namespace nnx::trainer {

namespace stdfs = std::filesystem;
using checkpoint::Composite;
using checkpoint::JsonRestore;
using checkpoint::JsonSave;
using checkpoint::StandardRestore;
using checkpoint::StandardSave;

namespace {

using Clock = std::chrono::steady_clock;

// Loads a torch.save'd state dict and writes its tensors into `model`'s params through
// `mapping_path`: {"torch.name": "nnx/path"} or {"torch.name": {"path": "nnx/path",
// "transpose": true}}, plus an optional "ignore": [names]. Every Param must be covered and every
// tensor mapped or ignored; shapes and dtypes must match.
void load_torch_params(Module& model, const std::string& dict_path, const std::string& mapping_path) {
  std::ifstream in(dict_path, std::ios::binary);
  NNX_CHECK(in.good(), "cannot read PyTorch state dict '", dict_path, "'");
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  c10::IValue iv;
  try {
    if (bytes.size() > 4 && bytes[0] == 'P' && bytes[1] == 'K') {
      // torch.save's default (zip) format: archive/data.pkl plus one record per storage.
      caffe2::serialize::PyTorchStreamReader reader(dict_path);
      iv = torch::jit::readArchiveAndTensors("data", "", "data/", c10::nullopt, c10::nullopt, c10::nullopt, reader);
    } else {
      iv = torch::jit::pickle_load(bytes);  // the legacy format (and nnx-ckpt export's)
    }
  } catch (const c10::Error& e) {
    NNX_CHECK(false, "'", dict_path, "' is not a readable torch.save'd dict of tensors (libtorch cannot read the "
              "OrderedDict that state_dict() returns; save torch.save(dict(model.state_dict()), path)): ",
              e.what_without_backtrace());
  }
  // libtorch 1.13's unpickler turns collections.OrderedDict (what state_dict() returns) into None.
  NNX_CHECK(!iv.isNone(), "'", dict_path, "' holds an OrderedDict, which libtorch cannot read; save a plain dict: "
            "torch.save(dict(model.state_dict()), path)");
  NNX_CHECK(iv.isGenericDict(), "'", dict_path, "' holds a ", iv.tagKind(), ", not a dict of tensors");
  std::ifstream mf(mapping_path);
  NNX_CHECK(mf.good(), "cannot read name mapping '", mapping_path, "'");
  auto mapping = nlohmann::json::parse(mf, nullptr, false);
  NNX_CHECK(!mapping.is_discarded() && mapping.is_object(), "'", mapping_path, "' is not a JSON object");
  std::set<std::string> ignore;
  if (mapping.contains("ignore")) ignore = mapping["ignore"].get<std::set<std::string>>();
  State params = state(model, Param), loaded;
  for (const auto& kv : iv.toGenericDict()) {
    const std::string name = kv.key().toStringRef();
    if (ignore.count(name)) continue;
    NNX_CHECK(mapping.contains(name), "'", dict_path, "' tensor '", name, "' is not in the mapping '", mapping_path,
              "' (map it, or list it under \"ignore\")");
    const auto& m = mapping[name];
    const std::string path = m.is_string() ? m.get<std::string>() : m.at("path").get<std::string>();
    const bool transpose = m.is_object() && m.value("transpose", false);
    NNX_CHECK(params.contains(path), "mapping '", mapping_path, "': '", name, "' -> '", path, "', which is not a Param of the model");
    at::Tensor t = kv.value().toTensor().detach();
    if (transpose) t = t.t().contiguous();
    const at::Tensor& want = params.at(path).value;
    NNX_CHECK(t.sizes() == want.sizes(), "'", name, "' -> '", path, "': PyTorch shape ", format_shape(t.sizes()), ", model ",
              format_shape(want.sizes()), transpose ? "" : " (a Linear weight needs \"transpose\": true)");
    NNX_CHECK(t.scalar_type() == want.scalar_type(), "'", name, "' -> '", path, "': dtype ", t.scalar_type(), ", model ",
              want.scalar_type());
    NNX_CHECK(!loaded.contains(path), "mapping '", mapping_path, "': two tensors map to '", path, "'");
    loaded.insert(path, {Param, t, params.at(path).metadata});
  }
  for (const auto& [path, vs] : params)
    NNX_CHECK(loaded.contains(path), "'", dict_path, "' has no tensor for the model's param '", path, "' (mapping '", mapping_path, "')");
  update(model, loaded);
}

struct Datasets {
  std::shared_ptr<data::Dataset> train, eval;
  int64_t in_features = 0, num_classes = 0, in_channels = 1, image_size = 28, vocab_size = 0;
};

Datasets load_data(const Config& c) {
  Datasets d;
  if (c.data.dataset == "fashion_mnist") {
    d.train = data::load_fashion_mnist(c.data.root, "train");
    d.eval = data::load_fashion_mnist(c.data.root, "test");
    d.in_features = 784;
    d.num_classes = 10;
  } else if (c.data.dataset == "synthetic") {
    int64_t n_eval = std::max<int64_t>(c.data.size / 4, 1);
    auto all = data::make_synthetic(c.data.size + n_eval, c.data.features, c.data.classes, c.seed);
    d.train = std::make_shared<data::TensorDataset>(all->inputs().slice(0, 0, c.data.size), all->targets().slice(0, 0, c.data.size));
    d.eval = std::make_shared<data::TensorDataset>(all->inputs().slice(0, c.data.size), all->targets().slice(0, c.data.size));
    d.in_features = c.data.features;
    d.num_classes = c.data.classes;
  } else {
    auto text = data::CharTextDataset::from_file(c.data.path, c.data.block_size);
    d.train = text->slice(0.0, 0.9);
    d.eval = text->slice(0.9, 1.0);
    d.vocab_size = text->vocab_size();
  }
  if (c.data.limit > 0) {
    auto* td = dynamic_cast<data::TensorDataset*>(d.train.get());
    NNX_CHECK(td != nullptr, "data.limit applies to fashion_mnist and synthetic data");
    int64_t n = std::min(c.data.limit, td->size());
    d.train = std::make_shared<data::TensorDataset>(td->inputs().slice(0, 0, n), td->targets().slice(0, 0, n));
  }
  return d;
}

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

}  // namespace

void keep_freed_memory() {
  for (const char* v : {"GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD"})
    if (std::getenv(v)) return;
  mallopt(M_MMAP_THRESHOLD, 256 << 20);  // allocations below 256 MiB come from the heap ...
  mallopt(M_TRIM_THRESHOLD, 1 << 30);    // ... and up to 1 GiB of freed heap stays mapped
}

int train(const Config& cfg, const RunOptions& ropts) {
  const auto t_start = Clock::now();
  keep_freed_memory();
  if (cfg.threads > 0) at::set_num_threads(cfg.threads);
  if (blas_is_reference())
    log::warn_parts("the reference BLAS (", blas_library_path(),
                    ") is active; matmuls run ~25x slower. Run tools/setup.sh to select OpenBLAS.");
  c10::Device device(cfg.device == "cpu" ? std::string("cpu") : cfg.device);
  if (device.is_cuda())
    NNX_CHECK(compat::cuda_available(), "device '", cfg.device, "' requested but this build has no usable CUDA (",
              compat::cuda_device_count(), " GPUs visible)");

  // Data parallel when started with several ranks (nnx-launch, torchrun, mpirun).
  const distributed::Env env = distributed::env_from_environment();
  std::shared_ptr<distributed::ProcessGroup> pg, ckpt_pg;
  if (env.world_size > 1) {
    pg = distributed::ProcessGroup::create(env, std::chrono::seconds(cfg.distributed.timeout_seconds));
    ckpt_pg = pg->new_group("checkpoint");
  }
  const bool lead = env.rank == 0;  // rank 0 prints, logs metrics and evaluates
  log::configure("nnx-train", env.rank, env.world_size);
  if (!cfg.log_level.empty()) log::set_level(log::level_from_string(cfg.log_level));
  if (lead)
    for (const auto& w : cfg.warnings) log::warn_parts(w);
  static std::ostream null_stream(nullptr);  // discards: only rank 0 prints
  std::ostream& out = lead ? std::cout : null_stream;

  out << "nnx-train: config " << cfg.source << " (resolved)\n" << cfg.to_json().dump(2) << "\n";

  Datasets ds = load_data(cfg);
  models::register_models();
  nlohmann::json mopts = cfg.model.options;
  std::string mtype;
  if (cfg.model.type == "mlp") {
    mtype = "MLP";
    mopts["in_features"] = ds.in_features;
    mopts["num_classes"] = ds.num_classes;
  } else if (cfg.model.type == "cnn") {
    mtype = "CNN";
    mopts["num_classes"] = ds.num_classes;
  } else {
    mtype = "GPT";
    mopts["vocab_size"] = ds.vocab_size;
    mopts["block_size"] = cfg.data.block_size;
  }
  auto rngs = std::make_shared<Rngs>(std::map<std::string, uint64_t>{{"params", cfg.seed}, {"dropout", cfg.seed + 1}});
  std::shared_ptr<Module> model = models::build_model(mtype, mopts, rngs);
  if (cfg.model.dtype == "bfloat16") model->to(at::kBFloat16);
  model->to(device);
  // Per-rank dropout masks; key and count stay replicated (and checkpointed once).
  if (env.world_size > 1) model->child<Rngs>("rngs").stream("dropout")->set_salt(static_cast<uint64_t>(env.rank) + 1);

  optim::AdamOptions ao;
  const auto& sc = cfg.schedule;
  const double lr = cfg.optimizer.learning_rate;
  if (sc.type == "constant") ao.learning_rate = optim::constant(lr);
  else if (sc.type == "linear_warmup") ao.learning_rate = optim::linear_warmup(lr, sc.warmup_steps, sc.init_value);
  else if (sc.type == "cosine_decay") ao.learning_rate = optim::cosine_decay(lr, sc.decay_steps, sc.alpha);
  else if (sc.type == "warmup_cosine") ao.learning_rate = optim::warmup_cosine(lr, sc.warmup_steps, sc.decay_steps, sc.end_value, sc.init_value);
  else ao.learning_rate = optim::step_decay(lr, sc.step_size, sc.gamma);
  ao.beta1 = cfg.optimizer.beta1;
  ao.beta2 = cfg.optimizer.beta2;
  ao.eps = cfg.optimizer.eps;
  ao.weight_decay = cfg.optimizer.weight_decay;
  ao.amsgrad = cfg.optimizer.amsgrad;
  std::vector<Filter> exempt;
  for (const auto& p : cfg.optimizer.no_decay) exempt.push_back(PathContains(p));
  ao.weight_decay_mask = Not(Any(exempt));
  std::vector<std::shared_ptr<optim::Transform>> tx;
  if (cfg.optimizer.clip_norm > 0) tx.push_back(optim::clip_by_global_norm(cfg.optimizer.clip_norm));
  tx.push_back(cfg.optimizer.type == "adamw" ? optim::adamw(ao) : optim::adam(ao));
  // ZeRO-1: each rank keeps the optimizer state of its rows of every param.
  const bool zero1 = cfg.distributed.zero_stage == 1 && env.world_size > 1;
  optim::Optimizer optimizer(model, tx, Param, zero1 ? Mesh{env.rank, env.world_size} : Mesh{});
  if (zero1) optimizer.set_process_group(pg);

  data::LoaderOptions lo;
  lo.batch_size = cfg.train.batch_size;
  lo.shuffle = cfg.data.shuffle;
  lo.seed = cfg.seed;
  lo.rank = env.rank;
  lo.world_size = env.world_size;
  data::DataLoader loader(ds.train, lo);
  const int64_t global_batch = cfg.train.batch_size * env.world_size;

  {
    std::error_code ec;  // a run.dir that cannot be made is a config error (exit 2), named as such
    stdfs::create_directories(cfg.run_dir, ec);
    NNX_CHECK(!ec, "run.dir '", cfg.run_dir, "' (", cfg.source, "): cannot create it: ", ec.message());
  }
  checkpoint::CheckpointManagerOptions mo = manager_options(cfg.checkpoint);
  mo.process_group = ckpt_pg;
  checkpoint::CheckpointManager manager(stdfs::path(cfg.run_dir) / "checkpoints", mo);

  // Items of a checkpoint, built from the live objects (also the restore templates).
  auto model_parts = [&] { return state(*model).split({Param, BatchStat, RngState, Everything()}); };
  nlohmann::json history = nlohmann::json::array();
  int64_t step = 0, skipped = 0;

  std::optional<int64_t> resume = ropts.resume_from ? ropts.resume_from : manager.latest_step();
  if (resume) {
    auto parts = model_parts();
    Composite args{{"params", StandardRestore(parts[0])},      {"batch_stats", StandardRestore(parts[1])},
                   {"rngs", StandardRestore(parts[2])},        {"optimizer", StandardRestore(state(optimizer))},
                   {"data", JsonRestore()},                    {"config", JsonRestore()},
                   {"metrics", JsonRestore()},                 {"trainer", JsonRestore()}};
    // A changed model is reported as such, before the restore would fail on a shape.
    try {
      const auto saved = manager.restore(*resume, Composite{{"config", JsonRestore()}}).json_item("config");
      auto structural = structural_differences(saved, cfg.to_json());
      std::string list;
      for (const auto& l : structural) list += "\n  " + l;
      NNX_CHECK(structural.empty(), "cannot resume '", cfg.run_dir, "' from step ", *resume,
                ": the model changed since the checkpoint was written:", list,
                "\n  use a new run.dir, or restore the original model settings");
    } catch (const Error& e) {
      if (std::string(e.what()).find("the model changed") != std::string::npos) throw;
      // An unreadable config: the full restore below reports (or falls back from) it.
    }
    checkpoint::Restored r;
    if (!ropts.resume_from && cfg.checkpoint.fallback_to_verified) {
      auto fb = manager.restore_newest_valid(args);
      for (const auto& s : fb.skipped) log::warn_parts("cannot resume from ", s);
      if (!fb.skipped.empty()) log::warn_parts("falling back to step ", fb.step);
      resume = fb.step;
      r = std::move(fb.restored);
    } else {
      try {
        r = manager.restore(*resume, args);
      } catch (const Error& e) {
        NNX_CHECK(false, "cannot resume from step ", *resume, ": ", e.what(),
                  ropts.resume_from ? std::string() : std::string(" (checkpoint.fallback_to_verified=true resumes from the newest step that restores)"));
      }
    }
    const nlohmann::json& saved_config = r.json_item("config");
    for (const auto& l : other_differences(saved_config, cfg.to_json()))
      log::warn_parts("config changed since step ", *resume, " (applied): ", l);
    update(*model, r.state("params"), r.state("batch_stats"), r.state("rngs"));
    update(optimizer, r.state("optimizer"));
    {
      const auto& d = r.json_item("data");
      int64_t index = d.at("index");
      const int64_t saved_global = d.value("global_batch", global_batch);
      if (saved_global != global_batch) {  // another world size: keep the position in examples
        int64_t examples = index * saved_global;
        index = examples / global_batch;
        if (examples % global_batch)
          log::warn_parts("global batch changed ", saved_global, " -> ", global_batch, "; resuming at example ",
                          index * global_batch, " of the epoch instead of ", examples);
      }
      loader.set_position(d.at("epoch"), std::min(index, loader.batches_per_epoch()));
    }
    history = r.json_item("metrics");
    step = r.json_item("trainer").at("step");
    skipped = r.json_item("trainer").value("skipped_steps", 0);
    out << "nnx-train: resumed from step " << step << " (" << manager.step_path(*resume).string()
              << "): params " << r.state("params").size() << " arrays (" << format_bytes(r.state("params").nbytes())
              << "), batch_stats " << r.state("batch_stats").size() << ", rngs " << r.state("rngs").size()
              << ", optimizer step " << optimizer.step_count() << ", data position epoch " << loader.epoch()
              << " batch " << loader.index() << ", " << history.size() << " metric records\n";
  }
  const stdfs::path metrics_path = stdfs::path(cfg.run_dir) / "metrics.jsonl";
  if (lead) write_metrics_file(metrics_path, history);  // drops records newer than the resumed step
  if (pg) distributed::broadcast_state(*model, *pg);  // every rank starts from rank 0's state

  auto evaluate = [&]() -> std::pair<double, double> {
    model->eval();
    at::NoGradGuard ng;
    double loss_sum = 0, correct = 0, count = 0, tokens = 0;
    const int64_t n = ds.eval->size();
    int64_t batches = 0;
    for (int64_t start = 0; start < n; start += cfg.eval.batch_size) {
      if (cfg.eval.max_batches > 0 && batches++ >= cfg.eval.max_batches) break;
      auto idx = at::arange(start, std::min(n, start + cfg.eval.batch_size), at::kLong);
      auto b = ds.eval->get_batch(idx);
      auto x = b.inputs.to(device), y = b.targets.to(device);
      if (cfg.model.dtype == "bfloat16" && x.is_floating_point()) x = x.to(at::kBFloat16);
      auto logits = model->forward(x).to(at::kFloat);
      auto flat = logits.dim() == 3 ? logits.reshape({-1, logits.size(-1)}) : logits;
      auto ty = y.reshape({-1});
      loss_sum += at::cross_entropy_loss(flat, ty, {}, at::Reduction::Sum).item<double>();
      correct += flat.argmax(1).eq(ty).sum().item<double>();
      tokens += static_cast<double>(ty.numel());
      count += 1;
    }
    model->train();
    return {loss_sum / std::max(tokens, 1.0), correct / std::max(tokens, 1.0)};
  };

  auto save = [&](int64_t at_step, const nlohmann::json& metrics, bool force) {
    auto parts = model_parts();
    // Non-finite params are never written: stop with the last good checkpoint intact.
    std::vector<at::Tensor> ps;
    for (const auto& [p, vs] : parts[0])
      if (vs.value.is_floating_point()) ps.push_back(vs.value.detach());
    NNX_CHECK_IO(ps.empty() || at::stack(at::_foreach_norm(ps, 2)).sum().isfinite().item<bool>(),
                 "params hold NaN or Inf at step ", at_step, "; not saving them. The last checkpoint is intact.");
    if (pg && cfg.distributed.batch_stats == "local") {
      // Per-rank statistics: the checkpoint holds rank 0's (a copy; each rank keeps its own).
      parts[1] = parts[1].clone();
      for (auto& [p, vs] : parts[1]) {
        std::vector<at::Tensor> one = {vs.value};
        pg->broadcast(one, 0);
      }
    }
    Composite args{{"params", StandardSave(parts[0])},
                   {"batch_stats", StandardSave(parts[1])},
                   {"rngs", StandardSave(parts[2])},
                   {"optimizer", StandardSave(state(optimizer))},
                   {"data", JsonSave(nlohmann::json{{"epoch", loader.epoch()}, {"index", loader.index()}, {"global_batch", global_batch}})},
                   {"config", JsonSave(cfg.to_json())},
                   {"metrics", JsonSave(history)},
                   {"trainer", JsonSave(nlohmann::json{{"step", at_step}, {"skipped_steps", skipped},
                                                       {"optimizer_step", optimizer.step_count()}})},
                   {"graphdef", JsonSave(graphdef(*model).to_json())}};
    return manager.save(at_step, args, metrics, force);
  };

  if (!ropts.init_from_torch.empty()) {
    NNX_CHECK(!resume, "'", cfg.run_dir, "' already has checkpoints; PyTorch weights initialise fresh runs only");
    load_torch_params(*model, ropts.init_from_torch, ropts.torch_mapping);
    if (pg) distributed::broadcast_state(*model, *pg);
    out << "nnx-train: params initialised from " << ropts.init_from_torch << "\n";
    if (ropts.import_only) {
      save(0, nlohmann::json::object(), /*force=*/true);
      manager.wait_until_finished();
      out << "nnx-train: wrote " << manager.step_path(0).string() << "; `nnx-train --config " << cfg.source
          << " run.dir=" << cfg.run_dir << "` fine-tunes from it\n";
      return 0;
    }
  }
  if (step >= cfg.train.max_steps) {
    out << "nnx-train: already at step " << step << " (train.max_steps = " << cfg.train.max_steps << "); nothing to do\n";
    return 0;
  }
  out << "nnx-train: " << mtype << " with " << state(*model, Param).size() << " param arrays ("
            << format_bytes(state(*model, Param).nbytes()) << "), " << ds.train->size() << " training examples, "
            << loader.batches_per_epoch() << " batches/epoch, device " << device.str() << ", threads "
            << at::get_num_threads() << (env.world_size > 1 ? ", world_size " + std::to_string(env.world_size) : std::string())
            << (zero1 ? ", ZeRO-1 optimizer state " + format_bytes(state(optimizer).nbytes()) + " on this rank" : std::string()) << "\n";

  const bool tty = ::isatty(STDERR_FILENO);
  auto window_start = Clock::now();
  int64_t window_examples = 0, window_steps = 0;
  const int64_t first_step = step;
  double last_loss = 0;
  model->train();
  while (step < cfg.train.max_steps) {
    zero_grad(*model, /*set_to_none=*/false);  // reuse the gradient buffers step after step
    double loss_value = 0;
    for (int64_t micro = 0; micro < cfg.train.grad_accum_steps; ++micro) {
      auto b = loader.next();
      auto x = b.inputs.to(device), y = b.targets.to(device);
      if (cfg.model.dtype == "bfloat16" && x.is_floating_point()) x = x.to(at::kBFloat16);
      auto loss = loss_fn(model->forward(x).to(at::kFloat), y);
      if (cfg.train.grad_accum_steps > 1) loss = loss / static_cast<double>(cfg.train.grad_accum_steps);
      if (step + 1 == ropts.inject_nonfinite_at_step) loss = loss * std::nan("");
      loss.backward();
      loss_value += loss.item<double>();
      window_examples += x.size(0);
    }
    State g = grads(*model);
    if (pg) {
      distributed::all_reduce_mean(g, *pg);
      std::vector<at::Tensor> v = {at::tensor({loss_value}, at::kDouble)};  // the mean loss
      pg->all_reduce_sum(v);
      loss_value = v[0][0].item<double>() / env.world_size;
      if (cfg.distributed.batch_stats == "sync") {
        State stats = state(*model, BatchStat);
        if (!stats.empty()) distributed::all_reduce_mean(stats, *pg);
      }
    }
    bool finite = std::isfinite(loss_value);
    if (finite) {  // one pass and one sync: a NaN or Inf anywhere makes the sum of norms non-finite
      std::vector<at::Tensor> gs;
      for (const auto& [p, vs] : g) gs.push_back(vs.value);
      finite = at::stack(at::_foreach_norm(gs, 2)).sum().isfinite().item<bool>();
    }
    if (finite) {
      optimizer.update(g);
    } else if (cfg.train.nonfinite == "stop") {
      NNX_CHECK_IO(false, "non-finite loss or gradient at step ", step + 1, " (loss ", loss_value,
                   "); stopping without saving (train.nonfinite = stop). The last checkpoint is intact.");
    } else {
      ++skipped;
      log::warn_parts("non-finite loss or gradient at step ", step + 1, "; step skipped");
    }
    ++step;
    ++window_steps;
    last_loss = loss_value;

    nlohmann::json rec;
    const bool log_now = step % cfg.train.log_every == 0 || step == cfg.train.max_steps;
    const bool eval_now = (cfg.eval.every_steps > 0 && step % cfg.eval.every_steps == 0) || step == cfg.train.max_steps;
    if (log_now || eval_now) {
      double secs = std::chrono::duration<double>(Clock::now() - window_start).count();
      rec = {{"step", step}, {"loss", loss_value}, {"learning_rate", optimizer.learning_rate()},
             {"epoch", loader.epoch()}, {"examples_per_sec", secs > 0 ? window_examples / secs : 0.0}};
      if (skipped) rec["skipped_steps"] = skipped;
      if (eval_now && lead) {
        auto [el, ea] = evaluate();
        rec["eval_loss"] = el;
        rec["eval_accuracy"] = ea;
      }
      history.push_back(rec);
      if (lead) {
        std::ofstream mf(metrics_path, std::ios::app);
        mf << rec.dump() << "\n";
      }
      double rate = secs > 0 ? window_steps / secs : 0;  // steps per second
      double eta = rate > 0 ? (cfg.train.max_steps - step) / rate : NAN;
      std::ostringstream line;
      line << "step " << step << "/" << cfg.train.max_steps << " loss " << std::fixed << std::setprecision(4) << loss_value
           << " " << std::setprecision(0) << rec["examples_per_sec"].get<double>() << " ex/s ETA " << format_duration(eta);
      if (eval_now && lead)
        line << " eval_loss " << std::setprecision(4) << rec["eval_loss"].get<double>() << " eval_accuracy "
             << rec["eval_accuracy"].get<double>();
      if (lead && tty) std::cerr << "\r" << line.str() << (eval_now ? "\n" : "") << std::flush;
      else if (lead) std::cout << line.str() << std::endl;
      window_start = Clock::now();
      window_examples = 0;
      window_steps = 0;
    }

    // The manager's save decision policy; with several ranks should_save() agrees the decision
    // (and a preemption seen by any rank) across them, so every rank saves the same steps.
    const bool save_now = manager.should_save(step);
    const bool preempted = manager.reached_preemption(step);
    if (save_now || step == cfg.train.max_steps || preempted) {
      nlohmann::json metrics = rec.is_null() ? nlohmann::json{{"step", step}, {"loss", loss_value}} : rec;
      if (!finite) metrics.erase("eval_loss");  // non-finite state never counts as best
      save(step, metrics, /*force=*/true);
    }
    if (preempted) {
      manager.wait_until_finished();
      if (tty) std::cerr << "\n";
      out << "nnx-train: stopped by signal " << checkpoint::preemption_signal() << " at step " << step
                << "; saved to " << manager.step_path(step).string() << ". Run the same command to resume.\n";
      return 0;
    }
    if (step == ropts.crash_after_step && (ropts.crash_rank < 0 || ropts.crash_rank == env.rank)) ::raise(SIGKILL);
  }
  manager.wait_until_finished();
  if (tty) std::cerr << "\n";
  double total = std::chrono::duration<double>(Clock::now() - t_start).count();
  const auto& last = history.back();
  out << "nnx-train: done: step " << step << " (" << step - first_step << " this run, " << skipped
            << " skipped) in " << format_duration(total) << ", loss " << last_loss;
  if (last.contains("eval_accuracy"))
    out << ", eval_loss " << last["eval_loss"].get<double>() << ", eval_accuracy " << last["eval_accuracy"].get<double>();
  out << "\nnnx-train: checkpoints in " << manager.directory().string() << " (latest " << *manager.latest_step();
  if (lead)  // rank 0 may still be applying retention; other ranks do not read steps here
    if (auto b = manager.best_step()) out << ", best " << *b;
  out << "), metrics in " << metrics_path.string() << "\n";
  return 0;
}

}  // namespace nnx::trainer
