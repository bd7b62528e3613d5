// The models nnx-train builds from YAML: MLP, CNN, GPT (char-level causal transformer).
#pragma once

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "nnx/framework/init.h"
#include "nnx/framework/module.h"
#include "nnx/framework/rngs.h"

namespace nnx::models {

/// Options of MLP: [N, ...] inputs flattened to in_features -> hidden layers (ReLU, Dropout)
/// -> num_classes logits.
struct MlpOptions {
  int64_t in_features = 784;
  std::vector<int64_t> hidden = {256, 128};
  int64_t num_classes = 10;
  double dropout = 0.0;
  init::Scheme init = init::Scheme::kPyTorch;
};

/// Multi-layer perceptron classifier. Input [N, ...] (flattened), output logits [N, classes].
/// Holds its Rngs as child "rngs" (params and dropout streams are state).
class MLP : public ModuleBase<MLP> {
 public:
  /// Throws nnx::Error for non-positive sizes or a dropout outside [0, 1).
  MLP(const MlpOptions& options, std::shared_ptr<Rngs> rngs);
  at::Tensor forward(const at::Tensor& x) override;
  std::string type_name() const override { return "MLP"; }
  nlohmann::json config() const override;
  MlpOptions options;
};

/// Options of CNN: two 3x3 conv blocks (conv, BatchNorm2d, ReLU, 2x2 max-pool), Dropout, dense
/// hidden layer (ReLU, Dropout), dense classifier.
struct CnnOptions {
  int64_t in_channels = 1;
  int64_t image_size = 28;  ///< square inputs; divisible by 4
  std::vector<int64_t> channels = {32, 64};
  int64_t hidden = 128;
  int64_t num_classes = 10;
  double dropout = 0.25;
  double bn_momentum = 0.1;
  init::Scheme init = init::Scheme::kPyTorch;
};

/// 2 conv + pool + BatchNorm + Dropout + 2 dense. Input [N, C, H, W], output logits [N, classes].
class CNN : public ModuleBase<CNN> {
 public:
  CNN(const CnnOptions& options, std::shared_ptr<Rngs> rngs);
  at::Tensor forward(const at::Tensor& x) override;
  std::string type_name() const override { return "CNN"; }
  nlohmann::json config() const override;
  CnnOptions options;
};

/// Options of GPT.
struct GptOptions {
  int64_t vocab_size = 96;
  int64_t block_size = 64;
  int64_t d_model = 128;
  int64_t num_heads = 4;
  int64_t num_layers = 2;
  double dropout = 0.1;
  init::Scheme init = init::Scheme::kPyTorch;
};

/// A small causal transformer language model (GPT-2 style pre-LayerNorm blocks; Radford et al.,
/// 2019). Token embedding and output projection are tied (logits = embed.attend(h)). Input ids
/// int64 [B, T] (T <= block_size), output logits [B, T, vocab_size].
class GPT : public ModuleBase<GPT> {
 public:
  GPT(const GptOptions& options, std::shared_ptr<Rngs> rngs);
  at::Tensor forward(const at::Tensor& ids) override;
  std::string type_name() const override { return "GPT"; }
  nlohmann::json config() const override;
  GptOptions options;
};

/// One pre-LN transformer block: x + attn(ln1(x)); x + mlp(ln2(x)) with a 4x GELU MLP.
class TransformerBlock : public ModuleBase<TransformerBlock> {
 public:
  TransformerBlock(int64_t d_model, int64_t num_heads, double dropout, Rngs& rngs, init::Scheme init);
  at::Tensor forward(const at::Tensor& x) override;
  std::string type_name() const override { return "TransformerBlock"; }
};

/// Registers MLP, CNN, GPT with nnx::ModuleRegistry (idempotent). Their registry config is
/// config() (the options as JSON), so a checkpoint's GraphDef rebuilds them without user code.
void register_models();

/// Builds a ModuleRegistry type (MLP, CNN, GPT, or one a user registered) from its JSON config,
/// drawing from (a copy of) `rngs`: the built-in models hold the streams as their child "rngs".
/// Throws nnx::Error naming the type (and the registered ones) or the bad key.
std::shared_ptr<Module> build_model(const std::string& type, const nlohmann::json& config,
                                    std::shared_ptr<Rngs> rngs);

}  // namespace nnx::models
