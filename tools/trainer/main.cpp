// nnx-train's command line, a library function: nnx-train is train_main() with the built-in
// types; a user's program registers its own (registry.h) and calls it.
#include <c10/util/Exception.h>

#include <CLI/CLI.hpp>
#include <iostream>

#include "nnx/framework/error.h"
#include "nnx/trainer/config.h"
#include "nnx/trainer/plot.h"
#include "nnx/trainer/trainer.h"
#include "tools/cli.h"

namespace nnx::trainer {

int train_main(int argc, char** argv) {
  CLI::App app{"nnx-train: train a model from a YAML config; rerun to resume from its checkpoints"};
  std::string config_path;
  std::vector<std::string> overrides;
  int64_t resume_from = -1, crash_after = -1, inject_nan = -1;
  int crash_rank = -1;
  bool print_only = false, plot = false, quiet = false;
  app.add_option("--config", config_path, "YAML config file")->required();
  app.add_option("overrides", overrides, "dotted.key=value overrides, e.g. train.max_steps=100");
  app.add_option("--resume-from", resume_from,
                 "resume from this committed step instead of the latest");
  app.add_flag("--print-config", print_only, "print the resolved config and exit (each run writes it to <run.dir>/config.json)");
  app.add_flag("-q,--quiet", quiet, "print only warnings, errors and the final summary");
  std::string init_torch, mapping;
  app.add_option("--init-from,--init-from-torch", init_torch,
                 "fresh runs: initialise params from a torch.save'd state dict or a safetensors file");
  app.add_option("--mapping", mapping, "JSON name mapping for --init-from (see docs/interop.md)");
  app.add_flag("--plot", plot,
               "at the end, render <run.dir>/metrics.png (loss and accuracy curves, gnuplot)");
  app.add_option("--crash-after-step", crash_after, "testing: SIGKILL this process after the step")
      ->group("");
  app.add_option("--crash-rank", crash_rank, "testing: only this rank crashes")->group("");
  app.add_option("--inject-nonfinite-at-step", inject_nan, "testing: make this step's loss NaN")
      ->group("");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  return nnx::tools::run_main("nnx-train", [&]() -> int {
    auto cfg = load_config(config_path, overrides);
    if (print_only) {
      std::cout << cfg.to_json().dump(2) << "\n";
      return 0;
    }
    RunOptions ro;
    if (resume_from >= 0) ro.resume_from = resume_from;
    ro.crash_after_step = crash_after;
    ro.crash_rank = crash_rank;
    ro.init_from = init_torch;
    ro.init_mapping = mapping;
    ro.inject_nonfinite_at_step = inject_nan;
    ro.quiet = quiet;
    int rc = train(cfg, ro);
    const char* rank = std::getenv("RANK");
    if (rc == 0 && plot && (!rank || std::string(rank) == "0")) {
      const std::string png = cfg.run_dir + "/metrics.png";
      plot_metrics(cfg.run_dir + "/metrics.jsonl", png);
      std::cout << "nnx-train: wrote " << png << "\n";
    }
    return rc;
  });
}

}  // namespace nnx::trainer
