// nnx-bench's row families, one source file each; main (nnx_bench.cpp) runs those --only names.
// Each adds its rows to bench::rows (bench_common.h). `reps`: repetitions of each timed row;
// `dir`: scratch files; `quick`: fewer steps (no 99M-param training).
#pragma once

#include <memory>
#include <string>

#include "bench_common.h"
#include "nnx/framework/data/dataset.h"

namespace nnx::bench {

// checkpoint_rows.cpp
/// Save, restore (warm and cold), structure check, async blocking and peak memory of 400 MB.
void bench_checkpoint(const stdfs::path& dir, int reps);
/// One 2.4 GB tensor restored right after its save, and cold against raw reads of its file.
void bench_restore_after_save(const stdfs::path& dir);
/// 2 GB of GPU state: saves and restores against D2H + raw write (a skipped row without CUDA).
void bench_gpu_checkpoint(const stdfs::path& dir, int reps);

// model_rows.cpp
/// Adam over 10 M params in 100 tensors against torch::optim::Adam; `condition` names the
/// malloc settings it runs under, `target` the ratio to meet.
void bench_optimizer(int reps, const std::string& condition, double target);
/// eval_shape of a 10-billion-parameter GPT: time and memory.
void bench_eval_shape();

// safetensors_rows.cpp
/// nnx-cpp's safetensors reader against Python's safetensors.numpy.load_file.
void bench_safetensors(const stdfs::path& dir, int reps);

// local_tier_rows.cpp
/// Restart cost from the local tier against the persistent one, and a local save's blocking.
void bench_local_tier(const stdfs::path& dir, int reps);
/// Replica traffic and transfer time at 2 ranks (launches nnx-bench --replica-rank).
void bench_local_replicas(int reps);
/// One rank of bench_local_replicas (nnx-bench --replica-rank DIR); returns the exit code.
int replica_rank(const std::string& dir, int reps);

// manager_rows.cpp
/// CheckpointManager's should_save + retention per step by the number of committed steps.
void bench_manager(const stdfs::path& dir);

// training_rows.cpp
/// nnx-train's steps against a plain libtorch loop (MLP, CNN; the 99M GPT without `quick`).
void bench_training(bool quick, const stdfs::path& dir);
/// Training with checkpoints against none, in alternating windows of one run.
void bench_snapshot(bool quick, const stdfs::path& dir, int gpt_runs);
/// The local tier's cost to training at 2 ranks.
void bench_local_tier_training(bool quick, const stdfs::path& dir);
/// nnx-train against tools/bench/train_step.py on the GPU (the CNN; the 99M GPT in bf16 with its
/// MFU); NNX_BENCH_GPU_DEVICE=cpu: the same rows small on the CPU (a dry run).
void bench_gpu_training(bool quick, const stdfs::path& dir);
/// Examples per second of the plain libtorch contender (nnx-bench --plain-train, its own process).
double plain_examples_per_sec(bool cnn, int steps, int threads, const std::shared_ptr<data::TensorDataset>& ds);

// fsdp_rows.cpp
/// ZeRO-3 against ZeRO-0 at 2 ranks (the 99M GPT without `quick`): peak memory and step time.
void bench_fsdp(bool quick, const stdfs::path& dir);

// distributed_rows.cpp
/// A 2-rank step with the gradient all-reduce overlapping backward against after it.
void bench_overlapped_all_reduce(int reps);
/// A 2-rank save against a 1-rank save of 400 MB.
void bench_distributed_save(const stdfs::path& dir, int reps);
/// One rank of bench_distributed_save (nnx-bench --dist-save-rank DIR).
int dist_save_rank(const std::string& dir, int reps);
/// One rank of bench_overlapped_all_reduce (nnx-bench --dp-step-rank ROUNDS).
int dp_step_rank(int rounds);

}  // namespace nnx::bench
