#include "nnx/framework/data/dataset.h"

#include <ATen/ATen.h>
#include <zlib.h>

#include <fstream>
#include <set>
#include <sstream>

#include "nnx/framework/compat.h"
#include "nnx/framework/data/idx.h"
#include "nnx/framework/error.h"

namespace nnx::data {

TensorDataset::TensorDataset(at::Tensor inputs, at::Tensor targets)
    : inputs_(std::move(inputs)), targets_(std::move(targets)) {
  NNX_CHECK(inputs_.dim() >= 1 && targets_.dim() >= 1 && inputs_.size(0) == targets_.size(0),
            "dataset inputs and targets disagree on the number of examples: ", inputs_.sizes(),
            " vs ", targets_.sizes());
}

Batch TensorDataset::get_batch(const at::Tensor& indices) const {
  return {inputs_.index_select(0, indices), targets_.index_select(0, indices)};
}

std::shared_ptr<TensorDataset> load_fashion_mnist(const std::string& root, const std::string& split) {
  NNX_CHECK(split == "train" || split == "test", "Fashion-MNIST split must be 'train' or 'test', got '",
            split, "'");
  const std::string prefix = root + "/" + (split == "train" ? "train" : "t10k");
  at::Tensor images = read_idx_gz(prefix + "-images-idx3-ubyte.gz");
  at::Tensor labels = read_idx_gz(prefix + "-labels-idx1-ubyte.gz");
  NNX_CHECK(images.dim() == 3 && images.size(1) == 28 && images.size(2) == 28, "file '", prefix,
            "-images-idx3-ubyte.gz' holds ", images.sizes(), ", expected [N, 28, 28]");
  NNX_CHECK(labels.dim() == 1 && labels.size(0) == images.size(0), "file '", prefix,
            "-labels-idx1-ubyte.gz' holds ", labels.sizes(), " labels for ", images.size(0), " images");
  at::Tensor x = (images.to(at::kFloat).div_(255.0).sub_(kFashionMnistMean).div_(kFashionMnistStd))
                     .unsqueeze(1)
                     .contiguous();
  at::Tensor y = labels.to(at::kLong);
  NNX_CHECK(y.max().item<int64_t>() < 10, "file '", prefix, "-labels-idx1-ubyte.gz' has labels >= 10");
  return std::make_shared<TensorDataset>(x, y);
}

std::string read_text_file(const std::string& path) {
  if (path.size() > 3 && path.compare(path.size() - 3, 3, ".gz") == 0) {
    gzFile f = gzopen(path.c_str(), "rb");
    NNX_CHECK(f != nullptr, "cannot open text file '", path, "'");
    std::string out;
    char buf[1 << 16];
    int r;
    while ((r = gzread(f, buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(r));
    gzclose(f);
    NNX_CHECK(r == 0, "text file '", path, "' is corrupt");
    return out;
  }
  std::ifstream in(path, std::ios::binary);
  NNX_CHECK(in.good(), "cannot open text file '", path, "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

CharTextDataset::CharTextDataset(const std::string& text, int64_t block_size) : block_size_(block_size) {
  NNX_CHECK(block_size > 0, "block_size must be positive, got ", block_size);
  NNX_CHECK(static_cast<int64_t>(text.size()) > block_size, "the text has ", text.size(),
            " characters; it must be longer than block_size (", block_size, ")");
  std::set<unsigned char> chars(text.begin(), text.end());
  vocab_.assign(chars.begin(), chars.end());
  int64_t lut[256] = {0};
  for (size_t i = 0; i < vocab_.size(); ++i) lut[static_cast<unsigned char>(vocab_[i])] = static_cast<int64_t>(i);
  ids_ = at::empty({static_cast<int64_t>(text.size())}, at::kLong);
  auto* p = ids_.data_ptr<int64_t>();
  for (size_t i = 0; i < text.size(); ++i) p[i] = lut[static_cast<unsigned char>(text[i])];
}

std::shared_ptr<CharTextDataset> CharTextDataset::from_file(const std::string& path, int64_t block_size) {
  return std::make_shared<CharTextDataset>(read_text_file(path), block_size);
}

Batch CharTextDataset::get_batch(const at::Tensor& indices) const {
  auto offsets = at::arange(block_size_, at::kLong);
  auto idx = indices.to(at::kLong).unsqueeze(1) + offsets.unsqueeze(0);  // [B, T]
  return {ids_.index({idx}), ids_.index({idx + 1})};
}

std::shared_ptr<CharTextDataset> CharTextDataset::slice(double b, double e) const {
  int64_t n = ids_.size(0);
  int64_t lo = static_cast<int64_t>(b * n), hi = static_cast<int64_t>(e * n);
  NNX_CHECK(hi - lo > block_size_, "text slice [", b, ", ", e, ") is too short for block_size ",
            block_size_);
  std::shared_ptr<CharTextDataset> out(new CharTextDataset());
  out->ids_ = ids_.slice(0, lo, hi).clone();
  out->vocab_ = vocab_;
  out->block_size_ = block_size_;
  return out;
}

std::shared_ptr<TensorDataset> make_synthetic(int64_t size, int64_t features, int64_t classes,
                                              uint64_t seed) {
  NNX_CHECK(size > 0 && features > 0 && classes > 1, "synthetic dataset needs size > 0, features > 0, classes > 1");
  auto gen = compat::make_generator(c10::Device(c10::kCPU), seed);
  auto w = at::empty({features, classes}).normal_(0, 1, gen);
  auto x = at::empty({size, features}).normal_(0, 1, gen);
  auto y = at::matmul(x, w).argmax(1);
  return std::make_shared<TensorDataset>(x, y);
}

}  // namespace nnx::data
