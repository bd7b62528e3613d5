// nnx-train's configuration: YAML mapped onto typed options structs, with errors that name
// file:line:column and the key, and dotted key=value overrides.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "nnx/checkpoint/emergency/local_checkpoint_options.h"
#include "nnx/checkpoint/busy_policy.h"
#include "nnx/checkpoint/io/snapshot_timing.h"
#include "nnx/trainer/enum_names.h"
#include "nnx/trainer/policy_kinds.h"

namespace nnx::trainer {

/// model.dtype: the params' dtype (bfloat16 keeps fp32 optimizer masters).
enum class ParamDType { kFloat32, kBFloat16 };
inline constexpr EnumName<ParamDType> kParamDTypes[] = {{ParamDType::kFloat32, "float32"}, {ParamDType::kBFloat16, "bfloat16"}};
/// optimizer.type: torch.optim.Adam or AdamW.
enum class OptimizerType { kAdam, kAdamW };
inline constexpr EnumName<OptimizerType> kOptimizerTypes[] = {{OptimizerType::kAdam, "adam"}, {OptimizerType::kAdamW, "adamw"}};
/// train.nonfinite: what a NaN or Inf loss or gradient does.
enum class Nonfinite { kSkip, kStop };
inline constexpr EnumName<Nonfinite> kNonfinite[] = {{Nonfinite::kSkip, "skip"}, {Nonfinite::kStop, "stop"}};
/// train.autocast: mixed precision of the forward pass.
enum class Autocast { kNone, kBFloat16 };
inline constexpr EnumName<Autocast> kAutocast[] = {{Autocast::kNone, "none"}, {Autocast::kBFloat16, "bfloat16"}};
/// distributed.batch_stats: BatchNorm running statistics averaged over ranks each step, or kept per rank.
enum class BatchStatsMode { kSync, kLocal };
inline constexpr EnumName<BatchStatsMode> kBatchStatsModes[] = {{BatchStatsMode::kSync, "sync"}, {BatchStatsMode::kLocal, "local"}};
/// checkpoint.snapshot (checkpoint::io::SnapshotTiming).
inline constexpr EnumName<checkpoint::io::SnapshotTiming> kSnapshotTimings[] = {
    {checkpoint::io::SnapshotTiming::kDeferred, "deferred"}, {checkpoint::io::SnapshotTiming::kInSave, "in_save"}};
/// checkpoint.busy_policy (checkpoint::BusyPolicy).
inline constexpr EnumName<checkpoint::BusyPolicy> kBusyPolicies[] = {{checkpoint::BusyPolicy::kWait, "wait"},
                                                                     {checkpoint::BusyPolicy::kSkip, "skip"},
                                                                     {checkpoint::BusyPolicy::kSecondBuffer, "second_buffer"}};

/// model: the network (type-specific keys; see docs/config.md).
struct ModelConfig {
  std::string type;            ///< "mlp", "cnn", "gpt" or a registered type (trainer/registry.h)
  nlohmann::json options;      ///< what the type's ModelType::options read from model:
  ParamDType dtype = ParamDType::kFloat32;
};

/// data: what to train on.
struct DataConfig {
  std::string dataset = "fashion_mnist";  ///< fashion_mnist | text | synthetic | a registered dataset
  std::string root = "/usr/share/datasets/fashion-mnist";
  std::string path;        ///< text file (dataset: text)
  int64_t block_size = 64;  ///< context length (dataset: text)
  int64_t size = 2048;      ///< examples (dataset: synthetic)
  int64_t features = 16;    ///< input features (dataset: synthetic)
  int64_t classes = 4;      ///< classes (dataset: synthetic)
  bool shuffle = true;
  int64_t limit = 0;  ///< use only the first `limit` training examples; 0 = all
  nlohmann::json options;  ///< a registered dataset's own keys, as its DatasetType::options read them
};

/// optimizer: Adam or AdamW (torch.optim semantics).
struct OptimizerConfig {
  OptimizerType type = OptimizerType::kAdamW;
  double learning_rate = 1e-3;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double weight_decay = 0.0;
  bool amsgrad = false;
  double clip_norm = 0.0;  ///< global-norm clipping threshold; 0 = off
  std::vector<std::string> no_decay = {"bias", "scale"};  ///< path parts exempt from decay
};

/// schedule: learning rate over steps.
struct ScheduleConfig {
  std::string type = "constant";  ///< constant | linear_warmup | cosine_decay | warmup_cosine | step_decay
  int64_t warmup_steps = 0;
  int64_t decay_steps = 0;  ///< 0 = train.max_steps
  double end_value = 0.0, init_value = 0.0, alpha = 0.0, gamma = 0.1;
  int64_t step_size = 1000;
};

/// train: the loop.
struct TrainConfig {
  int64_t max_steps = 1000;
  int64_t batch_size = 64;
  int64_t grad_accum_steps = 1;
  int64_t log_every = 50;
  Nonfinite nonfinite = Nonfinite::kSkip;
  Autocast autocast = Autocast::kNone;  ///< CPU and CUDA autocast
};

/// cudnn: cuDNN's algorithm choice on CUDA devices (ignored on the CPU).
struct CudnnConfig {
  bool benchmark = false;     ///< search the fastest kernels per shape (not reproducible run to run)
  bool deterministic = true;  ///< deterministic kernels only: what a bit-exact resume on a GPU needs
};

/// eval: periodic evaluation on the test split.
struct EvalConfig {
  int64_t every_steps = 0;  ///< 0 = only at the end
  int64_t batch_size = 1000;
  int64_t max_batches = 0;  ///< 0 = the whole split
};

/// checkpoint.local: a fast tier of frequent saves in this host's memory (the library's options).
using LocalTierConfig = checkpoint::emergency::LocalCheckpointOptions;

/// checkpoint: the CheckpointManager policy.
struct CheckpointConfig {
  int64_t save_interval_steps = 500;
  int max_to_keep = 3;
  int64_t keep_period = 0;  ///< 0 = none
  bool async = true;
  std::string best_metric = "eval_loss";  ///< "" = no best tracking
  std::string best_mode = "min";
  /// On resume, when the latest step does not restore (corrupt, truncated), fall back to the
  /// newest step that does, and say so. Off: such a resume is an error naming the problem.
  bool fallback_to_verified = false;
  /// Write datasets of 1 MiB or more with O_DIRECT (checkpoint::WriteOptions::direct_io); off:
  /// through the page cache.
  bool direct_io = true;
  /// When an async save's host snapshot copies: "deferred" (beside the next training step;
  /// the optimizer and layers wait at the write fence for a tensor not yet copied) or
  /// "in_save" (inside save(), which then blocks for the copy). checkpoint::SnapshotTiming.
  checkpoint::io::SnapshotTiming snapshot = checkpoint::io::SnapshotTiming::kDeferred;
  /// While the previous async save is still being written: "wait" for it, "skip" this
  /// interval's save (never the last step's or a preemption's), or "second_buffer" (snapshot
  /// into a second host buffer set, written after the previous). checkpoint::BusyPolicy.
  checkpoint::BusyPolicy busy_policy = checkpoint::BusyPolicy::kWait;
  /// checkpoint.save: save decision policies, a union (docs/config.md), e.g. YAML
  /// [{fixed_interval: 1000}, {specific_steps: [50]}]; unset = from save_interval_steps.
  std::optional<std::vector<SavePolicyConfig>> save;
  /// checkpoint.keep: preservation policies, a union in the same form, e.g. [{latest_n: 3},
  /// {best_n: {n: 2, metric: eval_loss}}]; unset = from max_to_keep, keep_period and best_metric.
  std::optional<std::vector<KeepPolicyConfig>> keep;
  /// checkpoint.local: the local tier (LocalTier); off unless local.save_interval_steps > 0.
  LocalTierConfig local;
};

/// distributed: data parallel over the ranks nnx-launch (or torchrun/mpirun variables) starts.
struct DistributedConfig {
  /// The backend of collectives on CUDA tensors: auto (NCCL on a CUDA device in a build with
  /// NCCL, else Gloo) | gloo | nccl. CPU tensors always go over Gloo (distributed::Backend).
  std::string backend = "auto";
  int64_t timeout_seconds = 300;    ///< every collective and the rendezvous wait at most this
  BatchStatsMode batch_stats = BatchStatsMode::kSync;  ///< local: rank 0's are saved
  /// 0: every rank keeps the whole optimizer state; 1: ZeRO-1, each rank keeps (and checkpoints)
  /// the optimizer state of its rows of every param (Rajbhandari et al., 2020); 3: ZeRO-3,
  /// params and gradients too (distributed::FullyShardedModel).
  int64_t zero_stage = 0;
  /// ZeRO-3's units: paths of the modules whose params are gathered together ("blocks/0");
  /// empty: FullyShardOptions' defaults. Checked against the model at start-up.
  std::vector<std::string> fsdp_units;
  /// ZeRO-3: gather the next unit's params while one computes (FullyShardOptions::prefetch).
  bool fsdp_prefetch = true;
  /// Average gradients in buckets while backward runs (distributed::GradientReducer, as
  /// PyTorch's DDP); false: one bucketed all-reduce after backward.
  bool overlap_grad_reduce = true;
};

/// The whole run.
struct Config {
  uint64_t seed = 0;
  std::string device = "cpu";  ///< cpu | cuda | cuda:N
  int threads = 0;             ///< intra-op threads; 0 = libtorch's default
  CudnnConfig cudnn;
  std::string log_level = "info";  ///< debug | info | warning | error | off (warnings go to stderr)
  std::string run_dir = "runs/default";
  ModelConfig model;
  DataConfig data;
  OptimizerConfig optimizer;
  ScheduleConfig schedule;
  TrainConfig train;
  EvalConfig eval;
  CheckpointConfig checkpoint;
  DistributedConfig distributed;
  std::string source;  ///< the YAML file
  std::vector<std::string> overrides;  ///< the command line's "key=value" overrides, as given
  /// Where run.dir was set, for errors about it: "FILE:line:col", "override 'run.dir=...'" or
  /// "the default".
  std::string run_dir_origin;
  /// What load_config() adjusted and the run should be told (e.g. a warmup clamped to a
  /// shortened run); nnx-train prints each as a warning. Not part of to_json().
  std::vector<std::string> warnings;

  /// Every value, defaults included (printed at start, saved in every checkpoint).
  nlohmann::json to_json() const;
};

/// Loads `path` and applies `overrides` ("train.max_steps=100", values parsed as YAML).
/// Throws nnx::Error (exit code 2) with "FILE:LINE:COL: message" for: YAML syntax errors, unknown
/// keys (naming the nearest valid key), wrong types, values out of range, missing required keys;
/// overrides are named as "override 'k=v'".
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});

/// Keys whose change makes a checkpoint unusable (model structure and dtype, data.block_size).
std::vector<std::string> structural_differences(const nlohmann::json& saved, const nlohmann::json& now);
/// Every other key whose value differs, as "key: old -> new".
std::vector<std::string> other_differences(const nlohmann::json& saved, const nlohmann::json& now);
/// Every leaf that differs between two JSON values, as "path: old -> new" (object keys joined
/// with '.', elements of arrays of equal length as [i]), in key order.
std::vector<std::string> json_differences(const nlohmann::json& a, const nlohmann::json& b);

}  // namespace nnx::trainer
