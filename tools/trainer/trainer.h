// The nnx-train loop: data, model, optimizer, evaluation, checkpointing, resume.
#pragma once

#include <cstdint>
#include <optional>

#include "nnx/trainer/config.h"

namespace nnx::trainer {

/// Command-line options of one run (beyond the config).
struct RunOptions {
  /// Resume from this step instead of the latest committed one.
  std::optional<int64_t> resume_from;
  /// Testing aid: the process SIGKILLs itself right after this step (async saves may be in
  /// flight). -1 = off.
  int64_t crash_after_step = -1;
  /// With crash_after_step: only this rank kills itself (-1 = every rank).
  int crash_rank = -1;
  /// Initialise params on a fresh run from a file of named tensors (a torch.save'd dict or a
  /// safetensors file), with `init_mapping` (a JSON file) naming where each tensor goes. See
  /// docs/interop.md.
  std::string init_from;
  std::string init_mapping;
  /// How messages and errors name init_from ("" = its path), e.g. "Orbax checkpoint D step 5"
  /// for the temporary file nnx-ckpt import-orbax converts it to.
  std::string init_from_name;
  /// Stop after initialising: save step 0 (an nnx checkpoint that later runs resume from) and
  /// exit. Used by `nnx-ckpt import`.
  bool import_only = false;
  /// Testing aid: the loss of this step is made NaN (exercises train.nonfinite). -1 = off.
  int64_t inject_nonfinite_at_step = -1;
  /// Print only warnings, errors and the final summary (no progress lines, no restore report).
  bool quiet = false;
};

/// Runs (or resumes) the training described by `config`. Returns the process exit code: 0 when
/// done or stopped by SIGTERM/SIGINT after saving. Throws nnx::Error for bad config or input
/// (exit code 2) and nnx::IOError for I/O failures (exit code 1).
int train(const Config& config, const RunOptions& options = {});

/// nnx-train's whole command line: `PROGRAM --config FILE [key=value ...]` with every flag of
/// nnx-train (--print-config, --quiet, --resume-from, --plot...). A user's program registers its
/// model types and datasets (registry.h), then returns train_main(argc, argv) from its main.
/// Returns the exit code: 0 done or preempted after saving, 1 I/O or internal error, 2 bad
/// input (config, arguments); errors are printed as one line on stderr, never thrown.
int train_main(int argc, char** argv);

/// Keeps freed host memory in the process for reuse: glibc's mmap threshold becomes 256 MiB and
/// its trim threshold 1 GiB (mallopt). A training step frees and reallocates activations and
/// gradients of a few MB; with glibc's defaults they return to the OS and come back as fresh
/// zeroed pages every step (1.21 M minor page faults in 200 CNN steps, 0.13 M with this). Does
/// nothing when the user set GLIBC_TUNABLES, MALLOC_*_ variables or LD_PRELOAD. train() calls it.
void keep_freed_memory();

}  // namespace nnx::trainer
