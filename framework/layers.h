// Layers on libtorch's functional ops (at::linear, at::conv2d, at::batch_norm, ...).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "nnx/framework/init.h"
#include "nnx/framework/module.h"
#include "nnx/framework/rngs.h"

namespace nnx {

/// Fully connected layer: y = x @ kernel + bias (at::linear with kernel transposed).
/// kernel: [in_features, out_features] (Flax's layout; PyTorch's weight is its transpose);
/// bias: [out_features]. Input [..., in_features] -> output [..., out_features].
class Linear : public ModuleBase<Linear> {
 public:
  /// Draws from rngs' "params" stream. Throws nnx::Error for non-positive sizes.
  Linear(int64_t in_features, int64_t out_features, Rngs& rngs, bool use_bias = true,
         init::Scheme scheme = init::Scheme::kPyTorch, at::ScalarType dtype = at::kFloat);
  /// Throws nnx::Error naming the layer when x's last dimension is not in_features.
  at::Tensor forward(const at::Tensor& x) override;
  std::string type_name() const override { return "Linear"; }
  nlohmann::json config() const override;
  int64_t in_features, out_features;
  bool use_bias;
  init::Scheme scheme;
  at::ScalarType dtype;  ///< of the params (config "dtype", omitted for float32)
};

/// 2-D convolution (at::conv2d), NCHW. kernel: [out, in, kh, kw] (PyTorch's layout); bias: [out].
/// Input [N, in, H, W] -> [N, out, H', W'].
class Conv2d : public ModuleBase<Conv2d> {
 public:
  Conv2d(int64_t in_channels, int64_t out_channels, int64_t kernel_size, Rngs& rngs,
         int64_t stride = 1, int64_t padding = 0, bool use_bias = true,
         init::Scheme scheme = init::Scheme::kPyTorch);
  /// Throws nnx::Error naming the layer when x is not [N, in_channels, H, W].
  at::Tensor forward(const at::Tensor& x) override;
  std::string type_name() const override { return "Conv2d"; }
  nlohmann::json config() const override;
  int64_t in_channels, out_channels, kernel_size, stride, padding;
  bool use_bias;
  init::Scheme scheme;
};

/// 2-D max pooling (at::max_pool2d). Input [N, C, H, W].
class MaxPool2d : public ModuleBase<MaxPool2d> {
 public:
  explicit MaxPool2d(int64_t kernel_size, int64_t stride = 0);  ///< stride 0 = kernel_size
  at::Tensor forward(const at::Tensor& x) override;
  std::string type_name() const override { return "MaxPool2d"; }
  nlohmann::json config() const override;
  int64_t kernel_size, stride;
};

/// Batch normalisation with PyTorch's semantics (at::batch_norm): in training, normalise with
/// the batch's statistics and update mean/var as running = (1 - momentum) * running + momentum *
/// batch (var unbiased); in eval, use the running statistics. Params scale, bias: [C];
/// BatchStats mean, var: [C]. `spatial_dims` 0 (BatchNorm1d: [N, C] or [N, C, L]) or 2
/// (BatchNorm2d: [N, C, H, W]).
class BatchNorm : public ModuleBase<BatchNorm> {
 public:
  BatchNorm(int64_t num_features, int spatial_dims, double momentum = 0.1, double eps = 1e-5);
  /// Throws nnx::Error naming the layer for a wrong rank or channel count.
  at::Tensor forward(const at::Tensor& x) override;
  std::string type_name() const override { return spatial_dims == 2 ? "BatchNorm2d" : "BatchNorm1d"; }
  nlohmann::json config() const override;
  int64_t num_features;
  int spatial_dims;
  double momentum, eps;
};

/// Layer normalisation over the last dimension (at::layer_norm). scale, bias: [dim].
class LayerNorm : public ModuleBase<LayerNorm> {
 public:
  explicit LayerNorm(int64_t dim, double eps = 1e-5);
  at::Tensor forward(const at::Tensor& x) override;
  std::string type_name() const override { return "LayerNorm"; }
  nlohmann::json config() const override;
  int64_t dim;
  double eps;
};

/// Inverted dropout: in training, zero each element with probability `rate` and scale the rest
/// by 1/(1-rate) (torch.nn.functional.dropout's semantics). The mask is drawn from the "dropout"
/// stream of the Rngs given at construction (held as child "rng", so it is checkpointed).
class Dropout : public ModuleBase<Dropout> {
 public:
  /// Throws nnx::Error when rate is outside [0, 1).
  Dropout(double rate, Rngs& rngs);
  at::Tensor forward(const at::Tensor& x) override;
  std::string type_name() const override { return "Dropout"; }
  nlohmann::json config() const override;
  double rate;
};

/// Token embedding: embedding [num_embeddings, features]; forward(ids: int64 [...]) ->
/// [..., features]. attend(x) = x @ embedding^T, the tied output projection (nnx.Embed.attend).
class Embedding : public ModuleBase<Embedding> {
 public:
  Embedding(int64_t num_embeddings, int64_t features, Rngs& rngs,
            init::Scheme scheme = init::Scheme::kPyTorch);
  /// Throws nnx::Error naming the layer for non-integer ids.
  at::Tensor forward(const at::Tensor& ids) override;
  /// Logits against every embedding: [..., features] -> [..., num_embeddings].
  at::Tensor attend(const at::Tensor& x) const;
  std::string type_name() const override { return "Embedding"; }
  nlohmann::json config() const override;
  int64_t num_embeddings, features;
  init::Scheme scheme;
};

/// Causal multi-head self-attention: qkv = Linear(d, 3d), out = Linear(d, d); scores scaled by
/// 1/sqrt(head_dim), masked above the diagonal when causal, softmax (Vaswani et al., 2017).
/// Input [B, T, d_model] -> [B, T, d_model].
class MultiHeadAttention : public ModuleBase<MultiHeadAttention> {
 public:
  /// Throws nnx::Error unless d_model is divisible by num_heads.
  MultiHeadAttention(int64_t d_model, int64_t num_heads, Rngs& rngs, bool causal = true,
                     init::Scheme scheme = init::Scheme::kPyTorch);
  at::Tensor forward(const at::Tensor& x) override;
  std::string type_name() const override { return "MultiHeadAttention"; }
  nlohmann::json config() const override;
  int64_t d_model, num_heads;
  bool causal;
  init::Scheme scheme;
};

/// Element-wise ReLU (at::relu).
class ReLU : public ModuleBase<ReLU> {
 public:
  at::Tensor forward(const at::Tensor& x) override;
  std::string type_name() const override { return "ReLU"; }
};

/// Element-wise GELU, exact erf form (at::gelu, approximate="none").
class GELU : public ModuleBase<GELU> {
 public:
  at::Tensor forward(const at::Tensor& x) override;
  std::string type_name() const override { return "GELU"; }
};

/// Flattens dimensions from start_dim on: [N, C, H, W] -> [N, C*H*W].
class Flatten : public ModuleBase<Flatten> {
 public:
  explicit Flatten(int64_t start_dim = 1) : start_dim(start_dim) {}
  at::Tensor forward(const at::Tensor& x) override;
  std::string type_name() const override { return "Flatten"; }
  nlohmann::json config() const override;
  int64_t start_dim;
};

namespace detail {
/// Registers the layer types above with ModuleRegistry (idempotent).
void register_builtin_layers();
}  // namespace detail

}  // namespace nnx
