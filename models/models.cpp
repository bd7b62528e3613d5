#include "nnx/models/models.h"
#include <algorithm>

#include <ATen/ATen.h>

#include <mutex>

#include "nnx/framework/graph.h"
#include "nnx/framework/layers.h"
#include "nnx/framework/state.h"

namespace nnx::models {

MLP::MLP(const MlpOptions& o, std::shared_ptr<Rngs> rngs) : options(o) {
  NNX_CHECK(o.in_features > 0 && o.num_classes > 0, "MLP: in_features and num_classes must be positive");
  register_module("rngs", rngs);
  auto layers = std::make_shared<Sequential>();
  layers->push_back(std::make_shared<Flatten>(1));
  int64_t width = o.in_features;
  for (int64_t h : o.hidden) {
    NNX_CHECK(h > 0, "MLP: hidden sizes must be positive, got ", h);
    layers->push_back(std::make_shared<Linear>(width, h, *rngs, true, o.init));
    layers->push_back(std::make_shared<ReLU>());
    if (o.dropout > 0) layers->push_back(std::make_shared<Dropout>(o.dropout, *rngs));
    width = h;
  }
  layers->push_back(std::make_shared<Linear>(width, o.num_classes, *rngs, true, o.init));
  register_module("layers", layers);
}

at::Tensor MLP::forward(const at::Tensor& x) { return child("layers").forward(x); }

nlohmann::json MLP::config() const {
  return {{"in_features", options.in_features}, {"hidden", options.hidden}, {"num_classes", options.num_classes},
          {"dropout", options.dropout}, {"init", init::to_string(options.init)}};
}

CNN::CNN(const CnnOptions& o, std::shared_ptr<Rngs> rngs) : options(o) {
  NNX_CHECK(o.channels.size() == 2, "CNN: 'channels' needs 2 entries, got ", o.channels.size());
  NNX_CHECK(o.image_size > 0 && o.image_size % 4 == 0, "CNN: image_size must be a positive multiple of 4, got ",
            o.image_size);
  register_module("rngs", rngs);
  auto f = std::make_shared<Sequential>();
  int64_t c = o.in_channels;
  for (int64_t out : o.channels) {
    f->push_back(std::make_shared<Conv2d>(c, out, 3, *rngs, 1, 1, true, o.init));
    f->push_back(std::make_shared<BatchNorm>(out, 2, o.bn_momentum));
    f->push_back(std::make_shared<ReLU>());
    f->push_back(std::make_shared<MaxPool2d>(2));
    c = out;
  }
  f->push_back(std::make_shared<Flatten>(1));
  if (o.dropout > 0) f->push_back(std::make_shared<Dropout>(o.dropout, *rngs));
  const int64_t side = o.image_size / 4;
  f->push_back(std::make_shared<Linear>(c * side * side, o.hidden, *rngs, true, o.init));
  f->push_back(std::make_shared<ReLU>());
  if (o.dropout > 0) f->push_back(std::make_shared<Dropout>(o.dropout, *rngs));
  f->push_back(std::make_shared<Linear>(o.hidden, o.num_classes, *rngs, true, o.init));
  register_module("layers", f);
}

at::Tensor CNN::forward(const at::Tensor& x) { return child("layers").forward(x); }

nlohmann::json CNN::config() const {
  return {{"in_channels", options.in_channels}, {"image_size", options.image_size},
          {"channels", options.channels}, {"hidden", options.hidden}, {"num_classes", options.num_classes},
          {"dropout", options.dropout}, {"bn_momentum", options.bn_momentum},
          {"init", init::to_string(options.init)}};
}

TransformerBlock::TransformerBlock(int64_t d, int64_t h, double dropout, Rngs& rngs, init::Scheme s) {
  register_module("ln1", std::make_shared<LayerNorm>(d));
  register_module("attn", std::make_shared<MultiHeadAttention>(d, h, rngs, true, s));
  register_module("ln2", std::make_shared<LayerNorm>(d));
  auto mlp = std::make_shared<Sequential>();
  mlp->push_back(std::make_shared<Linear>(d, 4 * d, rngs, true, s));
  mlp->push_back(std::make_shared<GELU>());
  mlp->push_back(std::make_shared<Linear>(4 * d, d, rngs, true, s));
  if (dropout > 0) mlp->push_back(std::make_shared<Dropout>(dropout, rngs));
  register_module("mlp", mlp);
}

at::Tensor TransformerBlock::forward(const at::Tensor& x) {
  at::Tensor h = x + child("attn").forward(child("ln1").forward(x));
  return h + child("mlp").forward(child("ln2").forward(h));
}

GPT::GPT(const GptOptions& o, std::shared_ptr<Rngs> rngs) : options(o) {
  NNX_CHECK(o.vocab_size > 0 && o.block_size > 0 && o.num_layers > 0, "GPT: vocab_size, block_size and num_layers must be positive");
  register_module("rngs", rngs);
  register_module("embed", std::make_shared<Embedding>(o.vocab_size, o.d_model, *rngs, o.init));
  register_variable("pos_embedding", Param(init::normal({o.block_size, o.d_model}, 0.02, *rngs->stream("params"))));
  auto blocks = std::make_shared<ModuleList>();
  for (int64_t i = 0; i < o.num_layers; ++i)
    blocks->push_back(std::make_shared<TransformerBlock>(o.d_model, o.num_heads, o.dropout, *rngs, o.init));
  register_module("blocks", blocks);
  register_module("ln_f", std::make_shared<LayerNorm>(o.d_model));
}

at::Tensor GPT::forward(const at::Tensor& ids) {
  NNX_CHECK(ids.dim() == 2 && ids.size(1) <= options.block_size, describe(), ": expected ids [B, T<=",
            options.block_size, "], got ", format_shape(ids.sizes()));
  const int64_t T = ids.size(1);
  at::Tensor h = child("embed").forward(ids) + variable("pos_embedding").value().slice(0, 0, T);
  for (const auto& s : child("blocks").slots()) h = s.child->forward(h);
  h = child("ln_f").forward(h);
  return child<Embedding>("embed").attend(h);  // tied output projection
}

nlohmann::json GPT::config() const {
  return {{"vocab_size", options.vocab_size}, {"block_size", options.block_size}, {"d_model", options.d_model},
          {"num_heads", options.num_heads}, {"num_layers", options.num_layers}, {"dropout", options.dropout},
          {"init", init::to_string(options.init)}};
}

namespace {
init::Scheme scheme_of(const nlohmann::json& c) { return init::scheme_from_string(c.value("init", "pytorch")); }

MlpOptions mlp_options(const nlohmann::json& c) {
  MlpOptions o;
  o.in_features = c.value("in_features", o.in_features);
  o.hidden = c.value("hidden", o.hidden);
  o.num_classes = c.value("num_classes", o.num_classes);
  o.dropout = c.value("dropout", o.dropout);
  o.init = scheme_of(c);
  return o;
}
CnnOptions cnn_options(const nlohmann::json& c) {
  CnnOptions o;
  o.in_channels = c.value("in_channels", o.in_channels);
  o.image_size = c.value("image_size", o.image_size);
  o.channels = c.value("channels", o.channels);
  o.hidden = c.value("hidden", o.hidden);
  o.num_classes = c.value("num_classes", o.num_classes);
  o.dropout = c.value("dropout", o.dropout);
  o.bn_momentum = c.value("bn_momentum", o.bn_momentum);
  o.init = scheme_of(c);
  return o;
}
GptOptions gpt_options(const nlohmann::json& c) {
  GptOptions o;
  o.vocab_size = c.value("vocab_size", o.vocab_size);
  o.block_size = c.value("block_size", o.block_size);
  o.d_model = c.value("d_model", o.d_model);
  o.num_heads = c.value("num_heads", o.num_heads);
  o.num_layers = c.value("num_layers", o.num_layers);
  o.dropout = c.value("dropout", o.dropout);
  o.init = scheme_of(c);
  return o;
}
// The registry hands a Rngs by reference; models hold theirs, so share a copy of its streams.
std::shared_ptr<Rngs> share(Rngs& r) { return clone_as(r); }
}  // namespace

void register_models() {
  static std::once_flag once;
  std::call_once(once, [] {
    ModuleRegistry::add("MLP", [](const nlohmann::json& c, Rngs& r) { return std::make_shared<MLP>(mlp_options(c), share(r)); });
    ModuleRegistry::add("CNN", [](const nlohmann::json& c, Rngs& r) { return std::make_shared<CNN>(cnn_options(c), share(r)); });
    ModuleRegistry::add("GPT", [](const nlohmann::json& c, Rngs& r) { return std::make_shared<GPT>(gpt_options(c), share(r)); });
  });
}

std::shared_ptr<Module> build_model(const std::string& type, const nlohmann::json& config, std::shared_ptr<Rngs> rngs) {
  register_models();
  try {
    // Through the registry, as a checkpoint's GraphDef would rebuild it. The registry's factory
    // takes a copy of the streams (same keys and counts).
    auto m = ModuleRegistry::create(type, config, *rngs);
    return m;
  } catch (const nlohmann::json::exception& e) {
    NNX_CHECK(false, "model '", type, "': bad config: ", e.what());
  }
  return nullptr;
}

}  // namespace nnx::models
