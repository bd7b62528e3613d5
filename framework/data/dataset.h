// Datasets: Fashion-MNIST (IDX), a char-level text corpus, and a synthetic classification task.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace nnx::data {

/// A batch: inputs and integer targets, first dimension = batch.
struct Batch {
  at::Tensor inputs;
  at::Tensor targets;
};

/// Random-access dataset of examples.
class Dataset {
 public:
  virtual ~Dataset() = default;
  /// Number of examples.
  virtual int64_t size() const = 0;
  /// The examples at `indices` stacked into a batch. Indices must be in [0, size()).
  virtual Batch get_batch(const at::Tensor& indices) const = 0;
};

/// A dataset over two tensors with the same first dimension.
class TensorDataset : public Dataset {
 public:
  /// Throws nnx::Error when the first dimensions differ.
  TensorDataset(at::Tensor inputs, at::Tensor targets);
  int64_t size() const override { return inputs_.size(0); }
  Batch get_batch(const at::Tensor& indices) const override;
  const at::Tensor& inputs() const { return inputs_; }
  const at::Tensor& targets() const { return targets_; }

 private:
  at::Tensor inputs_, targets_;
};

/// Fashion-MNIST's normalisation constants (mean and std of the training pixels in [0, 1]).
constexpr double kFashionMnistMean = 0.2860;
constexpr double kFashionMnistStd = 0.3530;

/// Loads Fashion-MNIST's `split` ("train": 60000, "test": 10000) from `root` (the directory of
/// Debian's dataset-fashion-mnist: /usr/share/datasets/fashion-mnist). Inputs: float32
/// [N, 1, 28, 28], (x/255 - mean)/std; targets: int64 [N] in [0, 10). Throws nnx::Error naming
/// the file when a file is missing or malformed, or when images and labels disagree.
std::shared_ptr<TensorDataset> load_fashion_mnist(const std::string& root, const std::string& split);

/// Character-level language modelling on a text: vocabulary = the distinct bytes, sorted.
/// Example i: inputs = ids[i : i+block_size], targets = ids[i+1 : i+block_size+1] (int64).
class CharTextDataset : public Dataset {
 public:
  /// Throws nnx::Error when the text is not longer than block_size.
  CharTextDataset(const std::string& text, int64_t block_size);
  /// Reads `path` (plain text, or gzip when it ends in .gz). Throws nnx::Error naming the file.
  static std::shared_ptr<CharTextDataset> from_file(const std::string& path, int64_t block_size);
  int64_t size() const override { return ids_.size(0) - block_size_; }
  Batch get_batch(const at::Tensor& indices) const override;
  int64_t vocab_size() const { return static_cast<int64_t>(vocab_.size()); }
  /// A dataset over the characters [begin, end) of this one's text (same vocabulary).
  std::shared_ptr<CharTextDataset> slice(double begin_fraction, double end_fraction) const;

 private:
  CharTextDataset() = default;
  at::Tensor ids_;
  std::string vocab_;
  int64_t block_size_ = 0;
};

/// A learnable synthetic classification task: inputs x ~ N(0, 1) of `features`, labels
/// argmax(x @ W) for a fixed random teacher W; both drawn from `seed`. Inputs float32
/// [N, features]; targets int64 [N].
std::shared_ptr<TensorDataset> make_synthetic(int64_t size, int64_t features, int64_t classes,
                                              uint64_t seed);

/// Reads a whole file (gunzipped when the name ends in .gz). Throws nnx::Error naming it.
std::string read_text_file(const std::string& path);

}  // namespace nnx::data
