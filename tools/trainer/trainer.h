// The nnx-train loop: data, model, optimizer, evaluation, checkpointing, resume.
#pragma once

#include <cstdint>
#include <optional>

#include "tools/trainer/config.h"

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
  /// Initialise params from a PyTorch state dict (torch.save'd dict of tensors) on a fresh run,
  /// with `torch_mapping` (JSON) naming where each tensor goes. See docs/interop.md.
  std::string init_from_torch;
  std::string torch_mapping;
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

/// Keeps freed host memory in the process for reuse: glibc's mmap threshold becomes 256 MiB and
/// its trim threshold 1 GiB (mallopt). A training step frees and reallocates activations and
/// gradients of a few MB; with glibc's defaults they return to the OS and come back as fresh
/// zeroed pages every step (1.21 M minor page faults in 200 CNN steps, 0.13 M with this). Does
/// nothing when the user set GLIBC_TUNABLES, MALLOC_*_ variables or LD_PRELOAD. train() calls it.
void keep_freed_memory();

}  // namespace nnx::trainer
