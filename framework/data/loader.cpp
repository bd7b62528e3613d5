#include "nnx/framework/data/loader.h"

#include <ATen/ATen.h>
#include <xxhash.h>

#include "nnx/framework/compat.h"
#include "nnx/framework/error.h"

namespace nnx::data {

DataLoader::DataLoader(std::shared_ptr<Dataset> dataset, LoaderOptions options)
    : dataset_(std::move(dataset)), options_(options) {
  NNX_CHECK(dataset_ != nullptr, "DataLoader needs a dataset");
  NNX_CHECK(options_.batch_size > 0, "batch_size must be positive, got ", options_.batch_size);
  NNX_CHECK(options_.world_size > 0 && options_.rank >= 0 && options_.rank < options_.world_size,
            "invalid rank ", options_.rank, " for world_size ", options_.world_size);
  NNX_CHECK(batches_per_epoch() > 0, "the dataset has ", dataset_->size(),
            " examples, fewer than one global batch of ", options_.batch_size * options_.world_size);
}

int64_t DataLoader::batches_per_epoch() const {
  int64_t global = options_.batch_size * options_.world_size;
  int64_t n = dataset_->size();
  return options_.drop_last ? n / global : (n + global - 1) / global;
}

void DataLoader::set_position(int64_t epoch, int64_t index) {
  NNX_CHECK(epoch >= 0 && index >= 0 && index <= batches_per_epoch(), "invalid data position (epoch ",
            epoch, ", index ", index, ") for ", batches_per_epoch(), " batches per epoch");
  epoch_ = epoch;
  index_ = index;
}

void DataLoader::ensure_order() {
  if (order_epoch_ == epoch_) return;
  const int64_t n = dataset_->size();
  if (options_.shuffle) {
    uint64_t words[2] = {options_.seed, static_cast<uint64_t>(epoch_)};
    auto gen = compat::make_generator(c10::Device(c10::kCPU), XXH64(words, sizeof(words), 0x6c6f6164));
    order_ = at::randperm(n, gen, at::TensorOptions().dtype(at::kLong));
  } else {
    order_ = at::arange(n, at::kLong);
  }
  order_epoch_ = epoch_;
}

Batch DataLoader::next() {
  if (index_ >= batches_per_epoch()) {
    ++epoch_;
    index_ = 0;
  }
  ensure_order();
  const int64_t n = dataset_->size();
  const int64_t global = options_.batch_size * options_.world_size;
  int64_t start = index_ * global + options_.rank * options_.batch_size;
  int64_t end = std::min(start + options_.batch_size, n);
  if (start >= n) start = end = n;  // a short last batch may leave some ranks empty
  ++index_;
  return dataset_->get_batch(order_.slice(0, start, end));
}

}  // namespace nnx::data
