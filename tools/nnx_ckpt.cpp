// nnx-ckpt: inspect, verify and compare nnx-cpp checkpoints.
//   nnx-ckpt list DIR              steps, time, bytes, metrics; latest and best; broken steps
// Exit codes (every command): 0 ok; 1 a check found problems (list: broken steps; verify: sizes or
// checksums; diff: tensors that differ) or an output could not be written; 2 bad usage or input:
// bad arguments, no such directory or step, a folder without checkpoints, or a checkpoint that
// show, diff or export cannot read (they stop at its first problem; verify names them all).
//   nnx-ckpt show DIR [STEP]       items and paths with kind, shape, dtype, bytes; JSON items
//   nnx-ckpt verify DIR [STEP]     checksums and sizes (exit 0 ok, 1 failures named)
//   nnx-ckpt diff A [STEP] B [STEP] [--atol X] [--rtol Y]  paths that differ and the max abs
//                                  difference (RUN S1 S2 too); with a tolerance, floating-point
//                                  tensors within |a - b| <= atol + rtol |b| (numpy.allclose) are
//                                  listed as close and do not count
//   nnx-ckpt export DIR [STEP] -o OUT.pt|OUT.safetensors [--format torch|safetensors] [--item params]
//                                  a state dict torch.load opens, or a safetensors file (dotted names)
//   nnx-ckpt plot RUN_DIR [-o PNG]  loss and accuracy curves from metrics.jsonl
//   nnx-ckpt import FILE --mapping MAP.json --config CFG.yaml [key=value ...]
//                                  step 0 of <run.dir>/checkpoints from a state dict or safetensors
//   nnx-ckpt export-orbax DIR [STEP] -o ORBAX_DIR [--python PY]
//                                  a step as an Orbax checkpoint a Flax NNX model restores
//   nnx-ckpt import-orbax DIR [STEP] --config CFG.yaml [--python PY] [key=value ...]
//                                  a step from an Orbax checkpoint of a Flax NNX model (+ optimizer)
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>

#include "nnx/checkpoint/checkpointer.h"
#include "nnx/checkpoint/format/directory.h"
#include "nnx/checkpoint/format/json_item.h"
#include "nnx/checkpoint/format/schema.h"
#include "nnx/checkpoint/format/safetensors.h"
#include "nnx/checkpoint/io/fs.h"
#include "nnx/checkpoint/format/state_reader.h"
#include "nnx/checkpoint/format/state_writer.h"
#include "nnx/checkpoint/io/checksum.h"
#include "nnx/checkpoint/shard_planner.h"
#include "nnx/checkpoint/verify.h"
#include "nnx/framework/dtype.h"
#include "nnx/checkpoint/manager.h"
#include "nnx/framework/error.h"
#include "tools/cli.h"
#include "nnx/trainer/config.h"
#include "nnx/checkpoint/emergency/local_tier.h"
#include "nnx/trainer/plot.h"
#include "nnx/trainer/orbax_interop.h"
#include "nnx/trainer/torch_export.h"
#include "nnx/trainer/trainer.h"

namespace stdfs = std::filesystem;
using namespace nnx;
using namespace nnx::checkpoint;

namespace {

// A manager that only reads (no lock, no clean-up, never creates the folder).
CheckpointManagerOptions read_only_options() {
  CheckpointManagerOptions o;
  o.read_only = true;
  o.create = false;
  return o;
}

// DIR may be a run dir (with checkpoints/), a checkpoints dir, or one step's dir.
stdfs::path resolve(const std::string& arg, const std::optional<int64_t>& step) {
  stdfs::path p(arg);
  NNX_CHECK(stdfs::exists(p), "'", arg, "' does not exist");
  if (stdfs::exists(p / kMetadataFile) && !step) return p;
  if (stdfs::exists(p / "checkpoints") && stdfs::is_directory(p / "checkpoints"))
    p /= "checkpoints";
  CheckpointManager m(p, read_only_options());
  if (step) {
    NNX_CHECK(stdfs::exists(m.step_path(*step) / kMetadataFile), "no committed step ", *step,
              " in '", p.string(), "'");
    return m.step_path(*step);
  }
  auto latest = m.latest_step();
  NNX_CHECK(latest.has_value(), "no committed checkpoint in '", p.string(), "'");
  return m.step_path(*latest);
}

stdfs::path checkpoints_dir(const std::string& arg) {
  stdfs::path p(arg);
  if (stdfs::exists(p / "checkpoints")) p /= "checkpoints";
  return p;
}

// The rank-* folders directly under `dir`, sorted.
std::vector<stdfs::path> rank_folders(const stdfs::path& dir) {
  std::vector<stdfs::path> out;
  std::error_code ec;
  if (!stdfs::is_directory(dir, ec)) return out;
  for (const auto& e : stdfs::directory_iterator(dir, ec))
    if (e.is_directory() && e.path().filename().string().rfind("rank-", 0) == 0) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

// The folders of a run's local tier (`local`, or the run dir's default one), if any: each
// rank's own, then the replicas it keeps of its peers (<rank folder>/replicas/rank-<source>).
// A `local` given by the user that holds no rank folder is an error naming it (a typo would
// otherwise list nothing and exit 0).
std::vector<stdfs::path> local_tier_folders(const std::string& run_dir, const std::string& local) {
  const stdfs::path root = local.empty() ? nnx::checkpoint::emergency::default_local_directory(run_dir) : stdfs::path(local);
  NNX_CHECK(local.empty() || !rank_folders(root).empty(), "--local '", local,
            "' holds no local tier (expected the rank-<r>-of-<n> folders of checkpoint.local.directory)");
  std::vector<stdfs::path> out;
  for (const auto& f : rank_folders(root)) {
    out.push_back(f);
    for (const auto& r : rank_folders(f / "replicas")) out.push_back(r);
  }
  return out;
}

// A rank folder's committed steps (read only).
std::vector<int64_t> local_steps(const stdfs::path& folder) {
  return CheckpointManager(folder, read_only_options()).all_steps();
}

void list_local_tier(const std::string& run_dir, const std::string& local) {
  for (const auto& f : local_tier_folders(run_dir, local)) {
    std::cout << (f.parent_path().filename() == "replicas" ? "local tier replica " : "local tier ") << f.string() << ": steps";
    for (int64_t s : local_steps(f)) std::cout << " " << s;
    std::cout << "\n";
  }
}

bool all_digits(const std::string& s) {
  return !s.empty() && s.size() < 19 && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// One step folder of a checkpoints directory as `list` shows it.
struct StepRow {
  int64_t step = 0;
  stdfs::path path;      // as found (a zero-padded name stays as it is)
  nlohmann::json meta;   // its metadata, when readable
  std::string problem;   // "" = nothing wrong at a glance
};

// What is wrong with a step folder at a glance ("" = nothing): read_metadata's own checks (the
// metadata, each listed file's presence and size); `verify` also checks every checksum.
std::string quick_problem(const stdfs::path& step_dir, nlohmann::json& meta) {
  try {
    meta = read_metadata(step_dir);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

// Every step folder (names of digits; the manager would leave out a step whose metadata it
// cannot read), committed or broken, by step. A folder removed meanwhile (retention) is skipped.
std::vector<StepRow> step_rows(const stdfs::path& dir) {
  std::vector<StepRow> rows;
  std::error_code ec;
  for (const auto& e : stdfs::directory_iterator(dir, ec)) {
    std::error_code dir_ec;
    if (!all_digits(e.path().filename().string()) || !e.is_directory(dir_ec)) continue;
    StepRow r;
    r.step = std::stoll(e.path().filename().string());
    r.path = e.path();
    r.problem = quick_problem(r.path, r.meta);
    rows.push_back(std::move(r));
  }
  std::sort(rows.begin(), rows.end(), [](const StepRow& a, const StepRow& b) { return a.step < b.step; });
  return rows;
}

// Which metric makes a step the best: --best-metric (and --best-mode), else the run's own config
// (saved with each of its steps: checkpoint.best_metric and best_mode), else none ("" metric;
// `why` says which case).
struct BestChoice {
  std::string metric, mode, source, why;
};
BestChoice best_choice(const CheckpointManager& m, const std::vector<StepRow>& rows, const std::string& metric,
                       const std::string& mode) {
  auto default_mode = [](const std::string& k) { return std::string(k == "eval_accuracy" ? "max" : "min"); };
  if (!metric.empty()) return {metric, mode.empty() ? default_mode(metric) : mode, "--best-metric", ""};
  // The newest step whose config reads (a step can pass list's checks and still fail to read).
  nlohmann::json ck;
  std::string unreadable;
  for (auto r = rows.rbegin(); r != rows.rend() && ck.is_null(); ++r) {
    if (!r->problem.empty()) continue;
    try {
      ck = m.restore(r->step, Composite{{"config", JsonRestore()}}).json_item("config").at("checkpoint");
    } catch (const std::exception& e) {
      const std::string what = e.what();
      if (what.find("has no item 'config'") == std::string::npos && unreadable.empty())
        unreadable = "step " + std::to_string(r->step) + "'s config does not read: " + what;
    }
  }
  if (ck.is_null())
    return {"", "", "", (unreadable.empty() ? std::string("no nnx-train config in the checkpoints") : unreadable) +
                            "; pass --best-metric NAME [--best-mode min|max]"};
  const std::string run_metric = ck.value("best_metric", std::string());
  if (run_metric.empty()) return {"", "", "", "best tracking is off in the run's config (checkpoint.best_metric \"\")"};
  return {run_metric, mode.empty() ? ck.value("best_mode", default_mode(run_metric)) : mode,
          mode.empty() ? "the run's config" : "the run's config, --best-mode", ""};
}

void print_row(const StepRow& r, bool latest, bool best, const std::string& metric) {
  if (!r.problem.empty()) {
    std::cout << std::left << std::setw(10) << r.step << "BROKEN: " << r.problem << "\n";
    return;
  }
  int64_t bytes = 0;
  const nlohmann::json files = r.meta.value("files", nlohmann::json::object());
  for (const auto& [name, entry] : files.items()) bytes += entry.at("size").get<int64_t>();
  std::time_t t = static_cast<std::time_t>(r.meta.value("time", 0.0));
  char when[32];
  std::strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", std::gmtime(&t));
  const nlohmann::json met = r.meta.value("metrics", nlohmann::json());
  std::ostringstream ms;
  if (met.is_object())
    for (const char* k : {"loss", "eval_loss", "eval_accuracy"})
      if (met.contains(k) && met[k].is_number()) ms << k << "=" << std::setprecision(5) << met[k].get<double>() << " ";
  std::cout << std::left << std::setw(10) << r.step << std::setw(22) << when << std::setw(12) << format_bytes(bytes)
            << ms.str() << (latest ? " [latest]" : "") << (best ? " [best " + metric + "]" : "") << "\n";
}

int cmd_list(const std::string& dir, const std::string& local, const std::string& best_metric,
             const std::string& best_mode) {
  const stdfs::path root = checkpoints_dir(dir);
  NNX_CHECK(stdfs::is_directory(root), "'", dir, "' is not a directory");
  const std::vector<StepRow> rows = step_rows(root);
  const auto local_folders = local_tier_folders(dir, local);
  NNX_CHECK(!rows.empty() || !local_folders.empty(), "'", dir,
            "' holds no checkpoints (expected a run dir or its checkpoints/ folder)");
  std::optional<int64_t> newest_good;
  int broken = 0;
  for (const auto& r : rows) {
    if (r.problem.empty()) newest_good = r.step;
    else ++broken;
  }
  CheckpointManagerOptions o = read_only_options();
  const BestChoice choice = best_choice(CheckpointManager(root, o), rows, best_metric, best_mode);
  if (!choice.metric.empty()) {
    o.best_fn = metric_key(choice.metric);
    o.best_mode = choice.mode;
  }
  // The manager's own ranking; a broken step has no metrics there, so it is never the best.
  const std::optional<int64_t> best = choice.metric.empty() ? std::nullopt : CheckpointManager(root, o).best_step();
  std::cout << std::left << std::setw(10) << "step" << std::setw(22) << "time (UTC)" << std::setw(12) << "bytes"
            << "metrics\n";
  for (const auto& r : rows) print_row(r, newest_good == r.step, best == r.step, choice.metric);
  if (rows.empty()) std::cout << "no committed checkpoints in " << root.string() << "\n";
  if (!choice.why.empty()) std::cout << "best: cannot tell (" << choice.why << ")\n";
  else if (!choice.metric.empty()) std::cout << "best: by " << choice.metric << " (" << choice.mode << "), from " << choice.source << "\n";
  list_local_tier(dir, local);
  if (broken) std::cout << broken << " broken step(s): `nnx-ckpt verify` names every failing check\n";
  return broken ? 1 : 0;
}

int cmd_show(const std::string& dir, std::optional<int64_t> step) {
  stdfs::path p = resolve(dir, step);
  auto meta = read_metadata(p);
  std::cout << "checkpoint " << p.string() << " (format v" << meta["format_version"] << ", step "
            << meta.value("step", nlohmann::json()).dump() << ", world_size "
            << meta.value("world_size", 1) << ")\n";
  H5File f = open_verified(p, meta);
  for (const auto& item : list_items(f)) {
    auto infos = list_item(f, item);
    int64_t total = 0;
    for (const auto& d : infos) total += d.nbytes;
    std::cout << "\n"
              << item << ": " << infos.size() << " variables, " << format_bytes(total) << "\n";
    size_t w = 4;
    for (const auto& d : infos) w = std::max(w, d.path.size());
    for (const auto& d : infos)
      std::cout << "  " << std::left << std::setw(static_cast<int>(w)) << d.path << "  "
                << std::setw(10) << d.kind << std::setw(16) << format_shape(d.shape)
                << std::setw(10) << d.dtype << format_bytes(d.nbytes)
                << (d.sharding.empty() ? "" : "  sharding=" + d.sharding) << "\n";
  }
  for (const auto& item : list_json_items(f)) {
    auto j = read_json(f, item);
    std::string text =
        item == "metrics" && j.is_array() ? std::to_string(j.size()) + " records" : j.dump();
    if (item == "graphdef")
      text = "root type " + j.value("type", std::string("?")) + " (" +
             std::to_string(j.dump().size()) + " bytes of JSON)";
    if (item == "config") text = j.dump(2);
    std::cout << "\njson/" << item << ": " << text << "\n";
  }
  return 0;
}

int cmd_verify(const std::string& dir, std::optional<int64_t> step, const std::string& local) {
  std::vector<stdfs::path> targets;
  stdfs::path root(dir);
  if (step && !local.empty()) {  // the step wherever this run holds it: persistent tier, ranks, replicas
    CheckpointManager m(checkpoints_dir(dir), read_only_options());
    if (stdfs::exists(m.step_path(*step) / kMetadataFile)) targets.push_back(m.step_path(*step));
    for (const auto& f : local_tier_folders(dir, local))
      if (stdfs::exists(f / std::to_string(*step) / kMetadataFile)) targets.push_back(f / std::to_string(*step));
    NNX_CHECK(!targets.empty(), "no committed step ", *step, " in '", checkpoints_dir(dir).string(), "' or the local tier '",
              local, "'");
  } else if (step || stdfs::exists(root / kMetadataFile)) {
    targets.push_back(resolve(dir, step));
  } else {
    CheckpointManager m(checkpoints_dir(dir), read_only_options());
    for (int64_t s : m.all_steps()) targets.push_back(m.step_path(s));
    for (const auto& f : local_tier_folders(dir, local))  // the local tier's steps too
      for (int64_t s : local_steps(f)) targets.push_back(f / std::to_string(s));
    NNX_CHECK(!targets.empty(), "no committed checkpoint in '", dir, "'");
  }
  bool ok = true;
  for (const auto& t : targets) {
    auto r = verify(t);
    std::cout << (r.ok ? "OK    " : "FAILED") << " " << t.string() << " (" << r.datasets_checked
              << " datasets, " << format_bytes(r.bytes_checked) << ")\n";
    for (const auto& p : r.problems) std::cout << "  " << p << "\n";
    ok = ok && r.ok;
  }
  return ok ? 0 : 1;
}

// diff's operands: two checkpoints, each a step's folder or a run / checkpoints dir with an
// optional STEP after it (default: its latest step); `RUN S1 S2` compares two steps of one run.
std::pair<stdfs::path, stdfs::path> diff_operands(const std::vector<std::string>& args) {
  auto is_step = [](const std::string& a) { return all_digits(a); };
  std::vector<std::pair<std::string, std::optional<int64_t>>> ops;
  for (const auto& a : args) {
    // A number after a step's own folder is another folder (`cd run/checkpoints; diff 20 40`).
    const bool after_step_folder = !ops.empty() && !ops.back().second && stdfs::exists(stdfs::path(ops.back().first) / kMetadataFile);
    if (!is_step(a) || ops.empty() || after_step_folder) ops.emplace_back(a, std::nullopt);
    else if (!ops.back().second) ops.back().second = std::stoll(a);
    else ops.emplace_back(ops.back().first, std::stoll(a));  // RUN S1 S2
  }
  NNX_CHECK(ops.size() == 2, "diff compares two checkpoints: A B, A STEP B STEP or RUN STEP STEP (A and B: a run dir, ",
            "its checkpoints/ or one step's folder); got ", args.size(), " arguments");
  return {resolve(ops[0].first, ops[0].second), resolve(ops[1].first, ops[1].second)};
}

// Whether floating-point `a` and `b` (same shape and dtype) are within numpy.allclose's
// tolerance; never for other dtypes, which must be equal.
bool within_tolerance(const at::Tensor& a, const at::Tensor& b, double atol, double rtol) {
  if ((atol <= 0 && rtol <= 0) || !a.is_floating_point()) return false;
  return at::allclose(a.to(at::kDouble), b.to(at::kDouble), rtol, atol);
}

int cmd_diff(const std::vector<std::string>& args, double atol, double rtol) {
  NNX_CHECK(atol >= 0 && rtol >= 0, "diff: --atol and --rtol must be >= 0, got ", atol, " and ", rtol);
  const auto [pa, pb] = diff_operands(args);
  int close = 0;
  H5File fa = open_verified(pa, read_metadata(pa)), fb = open_verified(pb, read_metadata(pb));
  int differences = 0;
  auto items_a = list_items(fa), items_b = list_items(fb);
  for (const auto& item : items_a) {
    if (std::find(items_b.begin(), items_b.end(), item) == items_b.end()) {
      std::cout << "only in A: item " << item << "\n";
      ++differences;
      continue;
    }
    State sa = read_state_untemplated(fa, item), sb = read_state_untemplated(fb, item);
    for (const auto& [path, va] : sa) {
      if (!sb.contains(path)) {
        std::cout << "only in A: " << item << "/" << path << "\n";
        ++differences;
        continue;
      }
      const auto& vb = sb.at(path);
      if (va.value.sizes() != vb.value.sizes() ||
          va.value.scalar_type() != vb.value.scalar_type()) {
        std::cout << "differs: " << item << "/" << path << ": " << format_shape(va.value.sizes())
                  << " " << dtype_name(va.value.scalar_type()) << " vs "
                  << format_shape(vb.value.sizes()) << " " << dtype_name(vb.value.scalar_type())
                  << "\n";
        ++differences;
      } else if (!at::equal(va.value, vb.value)) {
        double d = (va.value.to(at::kDouble) - vb.value.to(at::kDouble)).abs().max().item<double>();
        const bool ok = within_tolerance(va.value, vb.value, atol, rtol);
        std::cout << (ok ? "close: " : "differs: ") << item << "/" << path << ": max abs difference " << d << "\n";
        ++(ok ? close : differences);
      }
    }
    for (const auto& [path, vb] : sb)
      if (!sa.contains(path)) {
        std::cout << "only in B: " << item << "/" << path << "\n";
        ++differences;
      }
  }
  for (const auto& item : items_b)
    if (std::find(items_a.begin(), items_a.end(), item) == items_a.end()) {
      std::cout << "only in B: item " << item << "\n";
      ++differences;
    }
  std::cout << (differences ? std::to_string(differences) + " differences"
                            : "no differences in tensors")
            << (close ? " (" + std::to_string(close) + " within --atol " + nnx::detail::str(atol) + " --rtol " + nnx::detail::str(rtol) + ")"
                      : std::string())
            << " between " << pa.string() << " and " << pb.string() << "\n";
  return differences ? 1 : 0;
}

int cmd_export(const std::string& dir, std::optional<int64_t> step, const std::string& format,
               const std::string& item, const std::string& out_path) {
  NNX_CHECK(!out_path.empty(), "export needs -o OUT.pt or -o OUT.safetensors");
  const bool st_name = out_path.size() > 12 && out_path.compare(out_path.size() - 12, 12, ".safetensors") == 0;
  const std::string fmt = format.empty() ? (st_name ? "safetensors" : "torch") : format;
  NNX_CHECK(fmt == "torch" || fmt == "safetensors", "unknown export format '", fmt, "' (expected torch or safetensors)");
  stdfs::path p = resolve(dir, step);
  H5File f = open_verified(p, read_metadata(p));
  State s = read_state_untemplated(f, item);
  // A state dict: dotted names to tensors, in the checkpoint's order.
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& [path, vs] : s) {
    std::string name = path;
    std::replace(name.begin(), name.end(), '/', '.');
    tensors.emplace_back(name, vs.value);
  }
  if (fmt == "safetensors") {
    const nlohmann::json meta = read_metadata(p);
    write_safetensors(out_path, tensors, {{"nnx.item", item}, {"nnx.step", meta.value("step", nlohmann::json()).dump()}});
  } else {
    nnx::trainer::save_torch_state_dict(tensors, out_path);
  }
  std::cout << "wrote " << s.size() << " tensors of item '" << item << "' from " << p.string() << " to " << out_path
            << (fmt == "safetensors" ? " (safetensors; " : " (torch.load opens it, weights_only=True too; ")
            << "names use '.' for '/')\n";
  return 0;
}

int cmd_plot(const std::string& dir, const std::string& out) {
  stdfs::path run(dir);
  stdfs::path metrics = stdfs::is_directory(run) ? run / "metrics.jsonl" : run;
  std::string png = out.empty() ? (metrics.parent_path() / "metrics.png").string() : out;
  nnx::trainer::plot_metrics(metrics.string(), png);
  std::cout << "wrote " << png << "\n";
  return 0;
}

// Step 0 of the run `config` describes, from a PyTorch state dict (nnx-train does the work).
int cmd_import(const std::string& config, const std::vector<std::string>& overrides, const std::string& state_dict,
               const std::string& mapping) {
  auto cfg = nnx::trainer::load_config(config, overrides);
  nnx::trainer::RunOptions ro;
  ro.init_from = state_dict;
  ro.init_mapping = mapping;
  ro.import_only = true;
  return nnx::trainer::train(cfg, ro);
}

// A new folder under /tmp for the Orbax commands' intermediate safetensors file, removed with
// everything in it when it goes.
struct ScratchDir {
  stdfs::path path;
  ScratchDir() {
    char tmpl[] = "/tmp/nnx-orbax-XXXXXX";
    NNX_CHECK(::mkdtemp(tmpl) != nullptr, "cannot make a temporary folder in /tmp");
    path = tmpl;
  }
  ~ScratchDir() {
    std::error_code ec;
    nnx::checkpoint::io::remove_tree(path, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
};

// A step of the run `config` describes, from an Orbax checkpoint of a Flax NNX model: the
// converter reads it into a safetensors file of model/... and opt/... (Python, orbax-checkpoint),
// then nnx-train writes that state as the step it was (the optimizer's count).
int cmd_import_orbax(const std::string& config, const std::vector<std::string>& overrides, const std::string& orbax_dir,
                     const std::string& step, const std::string& python) {
  auto cfg = nnx::trainer::load_config(config, overrides);  // a bad config fails before Python starts
  const ScratchDir tmp;
  const stdfs::path file = tmp.path / "state.safetensors";
  const int64_t at = nnx::trainer::orbax_to_safetensors(python, orbax_dir, step, file.string());
  std::cout << "nnx-ckpt: read step " << at << " of the Orbax checkpoint " << orbax_dir << "\n";
  nnx::trainer::RunOptions ro;
  ro.init_from = file.string();
  ro.init_from_name = "the Orbax checkpoint " + orbax_dir + " step " + std::to_string(at);
  ro.import_only = true;
  return nnx::trainer::train(cfg, ro);
}

// A step as an Orbax checkpoint that a Flax NNX model of the same architecture restores: params
// and batch stats as item "model", Adam's moments and step as item "optimizer"
// (tools/interop/orbax_convert.py writes it from a safetensors file of them).
int cmd_export_orbax(const std::string& dir, std::optional<int64_t> step, const std::string& out, const std::string& python) {
  NNX_CHECK(!out.empty(), "export-orbax needs -o ORBAX_DIR");
  const stdfs::path p = resolve(dir, step);
  const nlohmann::json meta = read_metadata(p);
  H5File f = open_verified(p, meta);
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const char* item : {"params", "batch_stats"})
    for (const auto& [path, vs] : read_state_untemplated(f, item)) tensors.emplace_back("model/" + path, vs.value);
  for (const auto& [path, vs] : read_state_untemplated(f, "optimizer")) {
    NNX_CHECK(path == "step" || path.rfind("mu/", 0) == 0 || path.rfind("nu/", 0) == 0, p.string(), ": optimizer state '", path,
              "' has no place in optax.adamw's state (amsgrad and master weights do not cross)");
    tensors.emplace_back(path == "step" ? "opt/count" : "opt/" + path, vs.value);
  }
  const ScratchDir tmp;
  const std::string file = (tmp.path / "state.safetensors").string();
  write_safetensors(file, tensors, {}, /*sync=*/false);  // read once, then removed
  const int64_t at = meta.at("step").get<int64_t>();
  nnx::trainer::safetensors_to_orbax(python, file, out, at);
  std::cout << "wrote step " << at << " of " << p.string() << " to the Orbax checkpoint " << out << " (" << tensors.size()
            << " arrays; restore it with StandardRestore(nnx.state(abstract_model)), docs/interop.md)\n";
  return 0;
}

// The command line: every subcommand's operands, and which subcommand was given.
struct Args {
  std::string dir, local, best_metric, best_mode, format, item = "params", out;
  std::string state_dict, mapping, config, python = "python3";
  std::vector<std::string> diff_args, overrides;
  int64_t step = -1;
  double atol = 0, rtol = 0;  // diff's tolerance (0: bitwise)
  CLI::App *list = nullptr, *show = nullptr, *verify = nullptr, *diff = nullptr, *exp = nullptr, *imp = nullptr,
           *imp_orbax = nullptr, *exp_orbax = nullptr, *plot = nullptr;
};

void add_subcommands(CLI::App& app, Args& a) {
  const std::string local_help = "the run's checkpoint.local.directory (default: the run dir's default)";
  a.list = app.add_subcommand("list", "list steps with time, bytes, metrics, latest and best, broken ones marked (and the local tier's)");
  a.list->add_option("DIR", a.dir, "run dir or checkpoints dir")->required();
  a.list->add_option("--local", a.local, local_help);
  a.list->add_option("--best-metric", a.best_metric, "metric that makes a step the best (default: the run's checkpoint.best_metric)");
  a.list->add_option("--best-mode", a.best_mode, "min or max (default: the run's, else max for eval_accuracy, min otherwise)")
      ->check(CLI::IsMember({"min", "max"}));
  a.show = app.add_subcommand("show", "items and variables of a step (default latest)");
  a.show->add_option("DIR", a.dir)->required();
  a.show->add_option("STEP", a.step);
  a.verify = app.add_subcommand("verify", "check sizes and checksums (every step of both tiers, or STEP)");
  a.verify->add_option("DIR", a.dir)->required();
  a.verify->add_option("STEP", a.step);
  a.verify->add_option("--local", a.local, local_help);
  a.diff = app.add_subcommand("diff", "compare the tensors of two checkpoints (A B, A STEP B STEP, or RUN STEP STEP)");
  a.diff->add_option("CHECKPOINTS", a.diff_args, "two checkpoints: run dirs (latest step), a run dir and a STEP, or step folders")
      ->required();
  a.diff->add_option("--atol", a.atol, "absolute tolerance for floating-point tensors (default 0: bitwise)");
  a.diff->add_option("--rtol", a.rtol, "relative tolerance, as numpy.allclose's (default 0)");
  a.exp = app.add_subcommand("export", "write a checkpoint item as a PyTorch state dict or a safetensors file");
  a.exp->add_option("DIR", a.dir)->required();
  a.exp->add_option("STEP", a.step);
  a.exp->add_option("--format", a.format, "torch or safetensors (default: safetensors for an OUT ending in .safetensors, else torch)");
  a.exp->add_option("--item", a.item, "item to export (default params)");
  a.exp->add_option("-o,--output", a.out, "output file")->required();
  a.imp = app.add_subcommand("import", "make step 0 of a run from a PyTorch state dict or safetensors file (nnx-train fine-tunes from it)");
  a.imp->add_option("FILE", a.state_dict, "torch.save'd dict of tensors, or a safetensors file")->required();
  a.imp->add_option("--mapping", a.mapping, "JSON: file's tensor name -> nnx path (docs/interop.md)")->required();
  a.imp->add_option("--config", a.config, "the nnx-train config of the run")->required();
  a.imp->add_option("overrides", a.overrides, "dotted.key=value overrides (run.dir=...)");
  a.exp_orbax = app.add_subcommand("export-orbax", "write a step as an Orbax checkpoint that a Flax NNX model and its "
                                                   "nnx.Optimizer restore (docs/interop.md)");
  a.exp_orbax->add_option("DIR", a.dir)->required();
  a.exp_orbax->add_option("STEP", a.step);
  a.exp_orbax->add_option("-o,--output", a.out, "the Orbax CheckpointManager directory (the step must not exist there)")->required();
  a.exp_orbax->add_option("--python", a.python, "a Python with orbax-checkpoint and safetensors (default python3)");
  a.imp_orbax = app.add_subcommand("import-orbax", "make a step of a run from an Orbax checkpoint of a Flax NNX model "
                                                   "and its nnx.Optimizer (docs/interop.md)");
  a.imp_orbax->add_option("DIR", a.dir, "the Orbax CheckpointManager directory")->required();

  a.imp_orbax->add_option("--config", a.config, "the nnx-train config of the same architecture")->required();
  a.imp_orbax->add_option("--python", a.python, "a Python with orbax-checkpoint and safetensors (default python3; "
                                                "tools/setup-interop.sh makes .venv-interop/bin/python)");
  a.imp_orbax->add_option("args", a.overrides, "[STEP] [dotted.key=value ...]: the Orbax step (default: the latest) and "
                                               "config overrides (run.dir=...)");
  a.plot = app.add_subcommand("plot", "render metrics.jsonl as a PNG of loss and accuracy curves");
  a.plot->add_option("RUN_DIR", a.dir, "run dir or metrics.jsonl")->required();
  a.plot->add_option("-o,--output", a.out, "PNG path (default <run dir>/metrics.png)");
}

int dispatch(const Args& a) {
  const std::optional<int64_t> s = a.step >= 0 ? std::optional<int64_t>(a.step) : std::nullopt;
  if (*a.list) return cmd_list(a.dir, a.local, a.best_metric, a.best_mode);
  if (*a.show) return cmd_show(a.dir, s);
  if (*a.verify) return cmd_verify(a.dir, s, a.local);
  if (*a.diff) return cmd_diff(a.diff_args, a.atol, a.rtol);
  if (*a.exp) return cmd_export(a.dir, s, a.format, a.item, a.out);
  if (*a.plot) return cmd_plot(a.dir, a.out);
  if (*a.imp) return cmd_import(a.config, a.overrides, a.state_dict, a.mapping);
  if (*a.exp_orbax) return cmd_export_orbax(a.dir, s, a.out, a.python);
  if (*a.imp_orbax) {  // STEP is the one operand without '='
    std::vector<std::string> overrides, steps;
    for (const auto& o : a.overrides) (o.find('=') != std::string::npos ? overrides : steps).push_back(o);
    NNX_CHECK(steps.size() <= 1, "import-orbax: more than one STEP given");
    return cmd_import_orbax(a.config, overrides, a.dir, steps.empty() ? "latest" : steps[0], a.python);
  }
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"nnx-ckpt: inspect, verify and compare nnx-cpp checkpoints"};
  app.require_subcommand(1);
  Args args;
  add_subcommands(app, args);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  return nnx::tools::run_main("nnx-ckpt", [&]() -> int { return dispatch(args); });
}
