// DataLoader: a shuffled batch iterator whose order is a pure function of (seed, epoch) and
// whose position (epoch, index) is state that checkpoints save and restore.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>

#include "nnx/framework/data/dataset.h"

namespace nnx::data {

/// Options of a DataLoader.
struct LoaderOptions {
  int64_t batch_size = 64;  ///< examples per rank per batch
  bool shuffle = true;      ///< permute every epoch (else sequential)
  uint64_t seed = 0;        ///< the permutation of epoch e is randperm(N, XXH64(seed, e))
  bool drop_last = true;    ///< drop the last incomplete global batch
  int64_t rank = 0;         ///< this rank's shard
  int64_t world_size = 1;   ///< global batch = batch_size * world_size
};

/// Iterates batches: epoch e visits randperm(N) (seeded by seed and e); global batch i covers
/// positions [i*B*W, (i+1)*B*W) of that order, and rank r takes its r-th slice of B. The position
/// (epoch, index) is the next global batch; restoring it resumes the identical sequence.
class DataLoader {
 public:
  /// Throws nnx::Error when the dataset is smaller than one global batch or options are invalid.
  DataLoader(std::shared_ptr<Dataset> dataset, LoaderOptions options);
  /// The next batch of this rank; rolls over to the next epoch when one ends.
  Batch next();
  /// Global batches per epoch.
  int64_t batches_per_epoch() const;
  int64_t epoch() const { return epoch_; }
  int64_t index() const { return index_; }
  /// Sets the position; throws nnx::Error when index is outside [0, batches_per_epoch()].
  void set_position(int64_t epoch, int64_t index);
  const LoaderOptions& options() const { return options_; }

 private:
  void ensure_order();
  std::shared_ptr<Dataset> dataset_;
  LoaderOptions options_;
  int64_t epoch_ = 0, index_ = 0;
  int64_t order_epoch_ = -1;
  at::Tensor order_;
};

}  // namespace nnx::data
