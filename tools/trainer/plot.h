// Renders metrics.jsonl as a PNG of loss and accuracy curves with gnuplot (Debian's gnuplot-nox).
#pragma once

#include <string>

namespace nnx::trainer {

/// Writes `png`: training loss and eval_loss against step (left), eval_accuracy against step
/// (right), from the records of `metrics_jsonl`. Runs `gnuplot` from PATH. Throws nnx::Error
/// naming the file when it is missing or has no records, nnx::IOError when gnuplot fails or is
/// not installed.
void plot_metrics(const std::string& metrics_jsonl, const std::string& png);

}  // namespace nnx::trainer
