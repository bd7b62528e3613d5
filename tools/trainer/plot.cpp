#include "nnx/trainer/plot.h"

#include <nlohmann/json.hpp>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "nnx/framework/error.h"

namespace nnx::trainer {

void plot_metrics(const std::string& metrics_jsonl, const std::string& png) {
  std::ifstream in(metrics_jsonl);
  NNX_CHECK(in.good(), "cannot read metrics file '", metrics_jsonl, "'");
  const std::string base = png + ".tmp-" + std::to_string(::getpid());
  const std::string train_dat = base + ".train.dat", eval_dat = base + ".eval.dat", script = base + ".gp";
  int n_train = 0, n_eval = 0;
  {
    std::ofstream tr(train_dat), ev(eval_dat);
    std::string line;
    int lineno = 0;
    while (std::getline(in, line)) {
      ++lineno;
      if (line.empty()) continue;
      auto j = nlohmann::json::parse(line, nullptr, false);
      NNX_CHECK(!j.is_discarded() && j.contains("step"), metrics_jsonl, ":", lineno, ": not a metrics record");
      if (j.contains("loss") && j["loss"].is_number()) {
        tr << j["step"].get<int64_t>() << " " << j["loss"].get<double>() << "\n";
        ++n_train;
      }
      if (j.contains("eval_loss") && j["eval_loss"].is_number()) {
        ev << j["step"].get<int64_t>() << " " << j["eval_loss"].get<double>() << " " << j.value("eval_accuracy", 0.0) << "\n";
        ++n_eval;
      }
    }
  }
  NNX_CHECK(n_train > 0, "'", metrics_jsonl, "' holds no loss records to plot");
  {
    std::ofstream gp(script);
    gp << "set terminal png size 1100,420\n"
       << "set output '" << png << "'\n"
       << "set multiplot layout 1,2 title '" << std::filesystem::path(metrics_jsonl).parent_path().filename().string() << "'\n"
       << "set xlabel 'step'\nset ylabel 'loss'\nset grid\nset key top right\n"
       << "plot '" << train_dat << "' using 1:2 with lines title 'train loss'"
       << (n_eval ? ", '" + eval_dat + "' using 1:2 with linespoints title 'eval loss'" : std::string()) << "\n"
       << "set ylabel 'accuracy'\nset key bottom right\n";
    if (n_eval) gp << "plot '" << eval_dat << "' using 1:3 with linespoints title 'eval accuracy'\n";
    else gp << "set label 'no evaluation records' at graph 0.3,0.5\nplot [0:1] NaN notitle\n";
    gp << "unset multiplot\n";
  }
  const std::string cmd = "gnuplot '" + script + "' 2>&1";
  int rc = std::system(cmd.c_str());
  std::error_code ec;
  std::filesystem::remove(train_dat, ec);
  std::filesystem::remove(eval_dat, ec);
  std::filesystem::remove(script, ec);
  NNX_CHECK_IO(rc == 0 && std::filesystem::exists(png), "gnuplot failed to write '", png,
               "' (is gnuplot-nox installed? tools/setup.sh installs it)");
}

}  // namespace nnx::trainer
