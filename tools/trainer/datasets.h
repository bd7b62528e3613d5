// The datasets a config names (data.dataset), loaded for a run.
#pragma once

#include <cstdint>
#include <memory>

#include "nnx/framework/data/dataset.h"
#include "nnx/trainer/config.h"

namespace nnx::trainer {

/// A run's training and evaluation data, and the sizes the model is built for (0 where they do
/// not apply: vocab_size for images).
struct Datasets {
  std::shared_ptr<data::Dataset> train, eval;
  int64_t in_features = 0, num_classes = 0, in_channels = 1, image_size = 28, vocab_size = 0;
};

/// Loads data.dataset (fashion_mnist, synthetic, a text file, or a registered dataset) with
/// data.limit applied.
/// Throws nnx::Error naming the file or key.
Datasets load_data(const Config& c);

}  // namespace nnx::trainer
