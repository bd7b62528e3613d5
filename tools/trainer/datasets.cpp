#include "nnx/trainer/datasets.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "nnx/framework/error.h"
#include "nnx/trainer/registry.h"

namespace nnx::trainer {

Datasets load_data(const Config& c) {
  Datasets d;
  if (const DatasetType* registered = find_dataset(c.data.dataset)) {
    d = registered->load(c.data.options, c);
    NNX_CHECK(d.train && d.eval, "data.dataset '", c.data.dataset, "': its load() gave no ", d.train ? "eval" : "train", " split");
  } else if (c.data.dataset == "fashion_mnist") {
    d.train = data::load_fashion_mnist(c.data.root, "train");
    d.eval = data::load_fashion_mnist(c.data.root, "test");
    d.in_features = 784;
    d.num_classes = 10;
  } else if (c.data.dataset == "synthetic") {
    int64_t n_eval = std::max<int64_t>(c.data.size / 4, 1);
    auto all = data::make_synthetic(c.data.size + n_eval, c.data.features, c.data.classes, c.seed);
    d.train = std::make_shared<data::TensorDataset>(all->inputs().slice(0, 0, c.data.size), all->targets().slice(0, 0, c.data.size));
    d.eval = std::make_shared<data::TensorDataset>(all->inputs().slice(0, c.data.size), all->targets().slice(0, c.data.size));
    d.in_features = c.data.features;
    d.num_classes = c.data.classes;
  } else if (c.data.dataset == "text") {
    auto text = data::CharTextDataset::from_file(c.data.path, c.data.block_size);
    d.train = text->slice(0.0, 0.9);
    d.eval = text->slice(0.9, 1.0);
    d.vocab_size = text->vocab_size();
  } else {
    NNX_CHECK(false, "unknown data.dataset '", c.data.dataset, "'");
  }
  if (c.data.limit > 0) {
    auto* td = dynamic_cast<data::TensorDataset*>(d.train.get());
    NNX_CHECK(td != nullptr, "data.limit applies to fashion_mnist and synthetic data");
    int64_t n = std::min(c.data.limit, td->size());
    d.train = std::make_shared<data::TensorDataset>(td->inputs().slice(0, 0, n), td->targets().slice(0, 0, n));
  }
  return d;
}

}  // namespace nnx::trainer
