// Gradient averaging that overlaps the backward pass, as PyTorch's DistributedDataParallel does
// (its Reducer, Li et al., VLDB 2020): buckets all-reduced while later gradients are computed.
#pragma once

#include <cstdint>
#include <memory>

#include "nnx/framework/distributed.h"
#include "nnx/framework/module.h"

namespace nnx::distributed {

/// Averages `model`'s Param gradients over the ranks of `pg` during backward. The Params are
/// put in buckets of one dtype, in reverse registration order (roughly the order backward
/// produces them): the first of about 1 MiB, the others of about `bucket_bytes` (DDP's sizes). A post-hook on each Param's gradient accumulator (autograd's
/// AccumulateGrad) counts it in; when a bucket is complete its flattened copy is all-reduced
/// asynchronously (c10d), buckets started strictly in index order so that every rank issues the
/// same collectives in the same order. finish() waits, divides by world_size and writes the
/// means into the gradients. Equal, element for element, to all_reduce_mean after backward with
/// two ranks (a sum of two values does not depend on bucketing).
class GradientReducer {
 public:
  /// `model` must outlive the reducer. Throws nnx::Error when it has no Param that requires grad.
  GradientReducer(Module& model, std::shared_ptr<ProcessGroup> pg, int64_t bucket_bytes = 25 << 20);
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  /// Makes the next backward reduce its gradients as they become ready: call it before the
  /// backward of a step's last micro-batch (the hooks then see the accumulated gradients).
  /// Params given new tensors since (a restore's update()) get their hooks here.
  void arm();
  /// Starts any bucket the backward did not complete (a Param without a gradient counts as
  /// zeros), waits for every bucket and writes the averaged gradients. Throws nnx::IOError
  /// naming the rank when a collective fails or a rank is missing past the group's timeout.
  void finish();
  /// Buckets, for tests and logs.
  int64_t num_buckets() const;

 private:
  struct Shared;
  void hook(std::vector<at::Tensor> params);
  Module& model_;
  std::shared_ptr<ProcessGroup> pg_;
  int64_t bucket_bytes_;
  std::shared_ptr<Shared> shared_;
};

}  // namespace nnx::distributed
