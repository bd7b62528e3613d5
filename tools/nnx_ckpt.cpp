// nnx-ckpt: inspect, verify and compare nnx-cpp checkpoints.
//   nnx-ckpt list DIR              steps, time, bytes, metrics; latest and best
//   nnx-ckpt show DIR [STEP]       items and paths with kind, shape, dtype, bytes; JSON items
//   nnx-ckpt verify DIR [STEP]     checksums and sizes (exit 0 ok, 1 failures named)
//   nnx-ckpt diff A[/STEP] B[/STEP]  paths that differ and the max abs difference
//   nnx-ckpt export DIR [STEP] --format torch -o OUT.pt [--item params]
//                                  a state dict Python's torch.load opens (dotted names)
//   nnx-ckpt plot RUN_DIR [-o PNG]  loss and accuracy curves from metrics.jsonl
//   nnx-ckpt import STATE_DICT.pt --mapping MAP.json --config CFG.yaml [key=value ...]
//                                  step 0 of <run.dir>/checkpoints from PyTorch weights
#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/csrc/jit/serialization/pickle.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>

#include "nnx/checkpoint/checkpointer.h"
#include "nnx/checkpoint/format/json_item.h"
#include "nnx/checkpoint/format/state_reader.h"
#include "nnx/checkpoint/format/state_writer.h"
#include "nnx/checkpoint/io/checksum.h"
#include "nnx/checkpoint/shard_planner.h"
#include "nnx/checkpoint/manager.h"
#include "nnx/framework/error.h"
#include "tools/cli.h"
#include "tools/trainer/config.h"
#include "tools/trainer/local_tier.h"
#include "tools/trainer/plot.h"
#include "tools/trainer/trainer.h"

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
  const stdfs::path root = local.empty() ? nnx::trainer::default_local_directory(run_dir) : stdfs::path(local);
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

int cmd_list(const std::string& dir, const std::string& local) {
  CheckpointManager m(checkpoints_dir(dir), read_only_options());
  auto steps = m.all_steps();
  if (steps.empty()) {
    std::cout << "no committed checkpoints in " << m.directory().string() << "\n";
    list_local_tier(dir, local);
    return 0;
  }
  // Best by eval metrics when present.
  std::optional<int64_t> best;
  double best_v = 0;
  for (int64_t s : steps) {
    auto met = m.metrics(s);
    if (met.is_object() && met.contains("eval_loss") && met["eval_loss"].is_number()) {
      double v = met["eval_loss"];
      if (!best || v < best_v) {
        best = s;
        best_v = v;
      }
    }
  }
  std::cout << std::left << std::setw(10) << "step" << std::setw(22) << "time (UTC)"
            << std::setw(12) << "bytes"
            << "metrics\n";
  for (int64_t s : steps) {
    auto meta = read_metadata(m.step_path(s));
    int64_t bytes = 0;
    for (auto it = meta["files"].begin(); it != meta["files"].end(); ++it)
      bytes += it.value()["size"].get<int64_t>();
    std::time_t t = static_cast<std::time_t>(meta.value("time", 0.0));
    char when[32];
    std::strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", std::gmtime(&t));
    std::string tags;
    if (s == steps.back()) tags += " [latest]";
    if (best && s == *best) tags += " [best eval_loss]";
    nlohmann::json met = meta.value("metrics", nlohmann::json());
    std::ostringstream ms;
    if (met.is_object())
      for (const char* k : {"loss", "eval_loss", "eval_accuracy"})
        if (met.contains(k) && met[k].is_number())
          ms << k << "=" << std::setprecision(5) << met[k].get<double>() << " ";
    std::cout << std::left << std::setw(10) << s << std::setw(22) << when << std::setw(12)
              << format_bytes(bytes) << ms.str() << tags << "\n";
  }
  list_local_tier(dir, local);
  return 0;
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

int cmd_diff(const std::string& a, const std::string& b) {
  stdfs::path pa = resolve(a, std::nullopt), pb = resolve(b, std::nullopt);
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
        std::cout << "differs: " << item << "/" << path << ": max abs difference " << d << "\n";
        ++differences;
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
            << " between " << pa.string() << " and " << pb.string() << "\n";
  return differences ? 1 : 0;
}

int cmd_export(const std::string& dir, std::optional<int64_t> step, const std::string& format,
               const std::string& item, const std::string& out_path) {
  NNX_CHECK(format == "torch", "unknown export format '", format, "' (supported: torch)");
  NNX_CHECK(!out_path.empty(), "export needs -o OUT.pt");
  stdfs::path p = resolve(dir, step);
  H5File f = open_verified(p, read_metadata(p));
  State s = read_state_untemplated(f, item);
  // torch.save's layout of a state dict: an ordered dict of dotted names to tensors.
  c10::Dict<std::string, at::Tensor> dict;
  for (const auto& [path, vs] : s) {
    std::string name = path;
    std::replace(name.begin(), name.end(), '/', '.');
    dict.insert(name, vs.value);
  }
  std::vector<char> bytes = torch::jit::pickle_save(c10::IValue(dict));
  std::ofstream out(out_path, std::ios::binary | std::ios::trunc);
  NNX_CHECK_IO(out.good(), "cannot write '", out_path, "'");
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  NNX_CHECK_IO(out.good(), "cannot write '", out_path, "' (disk full?)");
  std::cout << "wrote " << s.size() << " tensors of item '" << item << "' from " << p.string()
            << " to " << out_path << " (torch.load opens it; names use '.' for '/')\n";
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
  ro.init_from_torch = state_dict;
  ro.torch_mapping = mapping;
  ro.import_only = true;
  return nnx::trainer::train(cfg, ro);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"nnx-ckpt: inspect, verify and compare nnx-cpp checkpoints"};
  app.require_subcommand(1);
  std::string dir, dir_b;
  int64_t step = -1;
  std::string local;
  const std::string local_help = "the run's checkpoint.local.directory (default: the run dir's default)";
  auto* list = app.add_subcommand("list", "list committed steps with time, bytes, metrics (and the local tier's)");
  list->add_option("DIR", dir, "run dir or checkpoints dir")->required();
  list->add_option("--local", local, local_help);
  auto* show = app.add_subcommand("show", "items and variables of a step (default latest)");
  show->add_option("DIR", dir)->required();
  show->add_option("STEP", step);
  auto* ver = app.add_subcommand("verify", "check sizes and checksums (every step of both tiers, or STEP)");
  ver->add_option("DIR", dir)->required();
  ver->add_option("STEP", step);
  ver->add_option("--local", local, local_help);
  auto* dif = app.add_subcommand(
      "diff", "compare the tensors of two checkpoints (step dirs or run dirs = latest)");
  dif->add_option("A", dir)->required();
  dif->add_option("B", dir_b)->required();
  auto* exp = app.add_subcommand("export", "write a checkpoint item as a PyTorch state dict");
  std::string format = "torch", item = "params", out;
  exp->add_option("DIR", dir)->required();
  exp->add_option("STEP", step);
  exp->add_option("--format", format, "torch");
  exp->add_option("--item", item, "item to export (default params)");
  exp->add_option("-o,--output", out, "output file")->required();
  auto* imp = app.add_subcommand(
      "import", "make step 0 of a run from a PyTorch state dict (nnx-train fine-tunes from it)");
  std::string state_dict, mapping, config;
  std::vector<std::string> overrides;
  imp->add_option("STATE_DICT", state_dict, "torch.save'd dict of tensors")->required();
  imp->add_option("--mapping", mapping, "JSON: torch name -> nnx path (docs/interop.md)")
      ->required();
  imp->add_option("--config", config, "the nnx-train config of the run")->required();
  imp->add_option("overrides", overrides, "dotted.key=value overrides (run.dir=...)");
  auto* plt =
      app.add_subcommand("plot", "render metrics.jsonl as a PNG of loss and accuracy curves");
  plt->add_option("RUN_DIR", dir, "run dir or metrics.jsonl")->required();
  plt->add_option("-o,--output", out, "PNG path (default <run dir>/metrics.png)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  std::optional<int64_t> s = step >= 0 ? std::optional<int64_t>(step) : std::nullopt;
  return nnx::tools::run_main("nnx-ckpt", [&]() -> int {
    if (*list) return cmd_list(dir, local);
    if (*show) return cmd_show(dir, s);
    if (*ver) return cmd_verify(dir, s, local);
    if (*dif) return cmd_diff(dir, dir_b);
    if (*exp) return cmd_export(dir, s, format, item, out);
    if (*plt) return cmd_plot(dir, out);
    if (*imp) return cmd_import(config, overrides, state_dict, mapping);
    return 2;
  });
}
