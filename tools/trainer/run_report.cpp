#include "nnx/trainer/run_report.h"

#include <ATen/Parallel.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cmath>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "nnx/checkpoint/emergency/checkpoint_manager.h"
#include "nnx/checkpoint/emergency/local_tier.h"
#include "nnx/checkpoint/manager.h"
#include "nnx/framework/error.h"
#include "nnx/framework/fully_shard.h"

namespace nnx::trainer {

namespace stdfs = std::filesystem;

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  int64_t t = static_cast<int64_t>(s);
  std::ostringstream os;
  if (t >= 3600) os << t / 3600 << "h";
  if (t >= 60) os << (t / 60) % 60 << "m";
  os << std::setw(t >= 60 ? 2 : 1) << std::setfill('0') << t % 60 << "s";
  return os.str();
}

RunReport::RunReport(const RunContext& ctx, TrainState& state, Clock::time_point t_start)
    : ctx_(ctx), state_(state), metrics_path_(stdfs::path(ctx.cfg.run_dir) / "metrics.jsonl"), t_start_(t_start) {}

void RunReport::rewrite_metrics_file() const {
  if (!ctx_.lead) return;
  const stdfs::path tmp = metrics_path_.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    NNX_CHECK_IO(out.good(), "cannot write '", tmp.string(), "'");
    for (const auto& rec : state_.history) out << rec.dump() << "\n";
    out.flush();
    NNX_CHECK_IO(out.good(), "cannot write '", tmp.string(), "' (disk full?)");
  }
  stdfs::rename(tmp, metrics_path_);
}

void RunReport::count_step(double loss) {
  ++window_steps_;
  last_loss_ = loss;
}

nlohmann::json RunReport::record_step(double loss, const std::function<std::pair<double, double>()>& evaluate) {
  const Config& cfg = ctx_.cfg;
  const int64_t step = state_.step;
  const bool log_now = step % cfg.train.log_every == 0 || step == cfg.train.max_steps;
  const bool eval_now = (cfg.eval.every_steps > 0 && step % cfg.eval.every_steps == 0) || step == cfg.train.max_steps;
  if (!log_now && !eval_now) return nullptr;
  const double secs = std::chrono::duration<double>(Clock::now() - window_start_).count();
  nlohmann::json rec = {{"step", step}, {"loss", loss}, {"learning_rate", state_.optimizer->learning_rate()},
                        {"epoch", state_.loader->epoch()}, {"examples_per_sec", secs > 0 ? window_examples_ / secs : 0.0}};
  if (state_.skipped) rec["skipped_steps"] = state_.skipped;
  if (eval_now && (ctx_.lead || state_.zero3)) {  // ZeRO-3's forward is collective: every rank runs it
    auto [el, ea] = evaluate();
    if (ctx_.lead) {
      rec["eval_loss"] = el;
      rec["eval_accuracy"] = ea;
    }
  }
  state_.history.push_back(rec);
  if (ctx_.lead) std::ofstream(metrics_path_, std::ios::app) << rec.dump() << "\n";
  const double rate = secs > 0 ? window_steps_ / secs : 0;  // steps per second
  const double eta = rate > 0 ? (cfg.train.max_steps - step) / rate : NAN;
  std::ostringstream line;
  line << "step " << step << "/" << cfg.train.max_steps << " loss " << std::fixed << std::setprecision(4) << loss << " "
       << std::setprecision(0) << rec["examples_per_sec"].get<double>() << " ex/s ETA " << format_duration(eta);
  if (eval_now && ctx_.lead)
    line << " eval_loss " << std::setprecision(4) << rec["eval_loss"].get<double>() << " eval_accuracy "
         << rec["eval_accuracy"].get<double>();
  if (ctx_.lead && !ctx_.ropts.quiet && ::isatty(STDERR_FILENO)) std::cerr << "\r" << line.str() << (eval_now ? "\n" : "") << std::flush;
  else if (ctx_.lead && !ctx_.ropts.quiet) std::cout << line.str() << std::endl;
  window_start_ = Clock::now();
  window_examples_ = window_steps_ = 0;
  return rec;
}

void RunReport::start(const std::string& what) {
  *ctx_.progress << "nnx-train: " << what << "\n";
  first_step_ = state_.step;
  window_start_ = Clock::now();
}

void RunReport::done(const checkpoint::emergency::CheckpointManager& tiers, const distributed::GatherStats* gathers) const {
  if (::isatty(STDERR_FILENO)) std::cerr << "\n";
  std::ostream& out = *ctx_.out;
  const double total = std::chrono::duration<double>(Clock::now() - t_start_).count();
  const auto& last = state_.history.back();
  out << "nnx-train: done: step " << state_.step << " (" << state_.step - first_step_ << " this run, " << state_.skipped
      << " skipped) in " << format_duration(total) << ", loss " << last_loss_;
  if (last.contains("eval_accuracy"))
    out << ", eval_loss " << last["eval_loss"].get<double>() << ", eval_accuracy " << last["eval_accuracy"].get<double>();
  struct rusage ru {};
  if (::getrusage(RUSAGE_SELF, &ru) == 0)  // ru_maxrss: the peak resident set, in KiB on Linux
    out << "\nnnx-train: peak memory " << ru.ru_maxrss / 1024 << " MiB" << (ctx_.env.world_size > 1 ? " (rank 0)" : "");
  if (gathers)  // ZeRO-3: what the all-gathers cost this rank (nnx-bench --only fsdp reads it)
    out << "\nnnx-train: all-gathers (rank 0): " << gathers->gathers << ", " << gathers->prefetched << " prefetched, "
        << gathers->wait_seconds << " s waited";
  const auto& local = tiers.local();
  if (local.configured())
    out << "\nnnx-train: local tier" << (ctx_.env.world_size > 1 ? " (rank 0)" : "") << ": " << local.saves_written() << " of "
        << local.saves_due() << " due saves written, " << local.saves_skipped()
        << " skipped while the previous one was still being written";
  const auto& manager = tiers.persistent();
  out << "\nnnx-train: checkpoints in " << manager.directory().string() << " (latest " << *manager.latest_step();
  if (ctx_.lead)  // rank 0 may still be applying retention; other ranks do not read steps here
    if (auto b = manager.best_step()) out << ", best " << *b;
  out << "), metrics in " << metrics_path_.string() << "\n";
}

}  // namespace nnx::trainer
