// What the parts of one nnx-train run share: the training state a checkpoint holds, and the
// run's place among the ranks (Run builds both; RunCheckpoints and RunReport use them).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <iosfwd>
#include <memory>

#include "nnx/framework/data/loader.h"
#include "nnx/framework/distributed.h"
#include "nnx/framework/module.h"
#include "nnx/optim/optimizer.h"
#include "nnx/trainer/trainer.h"

namespace nnx::trainer {

/// What a run trains and where it is: everything its checkpoints save and restore.
struct TrainState {
  std::shared_ptr<Module> model;
  std::unique_ptr<optim::Optimizer> optimizer;
  std::unique_ptr<data::DataLoader> loader;
  bool zero1 = false;             ///< ZeRO-1: each rank keeps the optimizer state of its rows
  bool zero3 = false;             ///< ZeRO-3: params, gradients and optimizer state are this rank's rows
  /// The model's GraphDef as built (global shapes, before ZeRO-3 shards the params): what
  /// checkpoints record and a resume compares, at any stage and world size.
  nlohmann::json graphdef;
  int64_t global_batch = 0;       ///< examples per optimizer step over all ranks
  int64_t step = 0;               ///< optimizer steps taken (also the skipped ones)
  int64_t skipped = 0;            ///< steps skipped for a non-finite loss or gradient
  nlohmann::json history = nlohmann::json::array();  ///< the metrics records, in every checkpoint
};

/// The run's config and place among the ranks, and where it prints.
struct RunContext {
  RunContext(const Config& c, const RunOptions& r) : cfg(c), ropts(r) {}
  const Config& cfg;
  const RunOptions& ropts;
  distributed::Env env;
  std::shared_ptr<distributed::ProcessGroup> pg;       ///< the training's collectives (null: one rank)
  std::shared_ptr<distributed::ProcessGroup> ckpt_pg;  ///< the persistent tier's own group
  bool lead = true;                                    ///< rank 0: prints, logs metrics, evaluates
  std::ostream* out = nullptr;                         ///< rank 0's stdout, else nothing
  std::ostream* progress = nullptr;                    ///< out, or nothing with --quiet
};

}  // namespace nnx::trainer
