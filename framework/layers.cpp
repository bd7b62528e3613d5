#include "nnx/framework/layers.h"

#include <ATen/ATen.h>

#include <cmath>
#include <mutex>
#include <nlohmann/json.hpp>

#include "nnx/framework/dtype.h"
#include "nnx/framework/graph.h"
#include "nnx/framework/state.h"

namespace nnx {

namespace {
// PyTorch's default weight init for Linear/Conv: kaiming_uniform_(a=sqrt(5)) gives
// U(-1/sqrt(fan_in), 1/sqrt(fan_in)); the bias uses the same bound.
at::Tensor init_kernel(at::IntArrayRef shape, int64_t fan_in, init::Scheme scheme, Rngs& rngs,
                       at::ScalarType dtype = at::kFloat) {
  auto& rng = *rngs.stream("params");
  if (scheme == init::Scheme::kLecun) return init::lecun_normal(shape, fan_in, rng, dtype);
  double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
  return init::uniform(shape, -bound, bound, rng, dtype);
}
at::Tensor init_bias(int64_t n, int64_t fan_in, init::Scheme scheme, Rngs& rngs,
                     at::ScalarType dtype = at::kFloat) {
  if (scheme == init::Scheme::kLecun) return init::zeros({n}, dtype);
  double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
  return init::uniform({n}, -bound, bound, *rngs.stream("params"), dtype);
}
}  // namespace

Linear::Linear(int64_t in, int64_t out, Rngs& rngs, bool bias, init::Scheme s, at::ScalarType dtype)
    : in_features(in), out_features(out), use_bias(bias), scheme(s), dtype(dtype) {
  NNX_CHECK(in > 0 && out > 0, "Linear needs positive sizes, got in_features=", in,
            " out_features=", out);
  register_variable("kernel", Param(init_kernel({in, out}, in, s, rngs, dtype)));
  if (bias) register_variable("bias", Param(init_bias(out, in, s, rngs, dtype)));
}

at::Tensor Linear::forward(const at::Tensor& x) {
  NNX_CHECK(x.dim() >= 1 && x.size(-1) == in_features, describe(), ": expected input [..., ",
            in_features, "], got ", format_shape(x.sizes()));
  const at::Tensor& k = variable("kernel").value();
  return at::linear(x, k.t(), use_bias ? variable("bias").value() : at::Tensor());
}

nlohmann::json Linear::config() const {
  nlohmann::json c = {{"in_features", in_features}, {"out_features", out_features}, {"use_bias", use_bias},
                      {"init", init::to_string(scheme)}};
  if (dtype != at::kFloat) c["dtype"] = dtype_name(dtype);  // a bf16 Linear rebuilds as bf16
  return c;
}

Conv2d::Conv2d(int64_t in, int64_t out, int64_t k, Rngs& rngs, int64_t stride_, int64_t padding_,
               bool bias, init::Scheme s)
    : in_channels(in), out_channels(out), kernel_size(k), stride(stride_), padding(padding_),
      use_bias(bias), scheme(s) {
  NNX_CHECK(in > 0 && out > 0 && k > 0 && stride_ > 0 && padding_ >= 0,
            "Conv2d: invalid sizes in_channels=", in, " out_channels=", out, " kernel_size=", k,
            " stride=", stride_, " padding=", padding_);
  int64_t fan_in = in * k * k;
  register_variable("kernel", Param(init_kernel({out, in, k, k}, fan_in, s, rngs)));
  if (bias) register_variable("bias", Param(init_bias(out, fan_in, s, rngs)));
}

at::Tensor Conv2d::forward(const at::Tensor& x) {
  NNX_CHECK(x.dim() == 4 && x.size(1) == in_channels, describe(), ": expected input [N, ",
            in_channels, ", H, W], got ", format_shape(x.sizes()));
  return at::conv2d(x, variable("kernel").value(),
                    use_bias ? variable("bias").value() : at::Tensor(), {stride, stride},
                    {padding, padding});
}

nlohmann::json Conv2d::config() const {
  return {{"in_channels", in_channels}, {"out_channels", out_channels},
          {"kernel_size", kernel_size}, {"stride", stride}, {"padding", padding},
          {"use_bias", use_bias}, {"init", init::to_string(scheme)}};
}

MaxPool2d::MaxPool2d(int64_t k, int64_t s) : kernel_size(k), stride(s == 0 ? k : s) {
  NNX_CHECK(k > 0 && stride > 0, "MaxPool2d: invalid kernel_size=", k, " stride=", s);
}

at::Tensor MaxPool2d::forward(const at::Tensor& x) {
  NNX_CHECK(x.dim() == 4, describe(), ": expected input [N, C, H, W], got ",
            format_shape(x.sizes()));
  return at::max_pool2d(x, {kernel_size, kernel_size}, {stride, stride});
}

nlohmann::json MaxPool2d::config() const {
  return {{"kernel_size", kernel_size}, {"stride", stride}};
}

BatchNorm::BatchNorm(int64_t n, int dims, double m, double e)
    : num_features(n), spatial_dims(dims), momentum(m), eps(e) {
  NNX_CHECK(n > 0, "BatchNorm needs num_features > 0, got ", n);
  NNX_CHECK(dims == 0 || dims == 2, "BatchNorm supports 0 (1d) or 2 (2d) spatial dims, got ", dims);
  NNX_CHECK(m >= 0 && m <= 1, "BatchNorm momentum must be in [0, 1], got ", m);
  register_variable("scale", Param(init::ones({n})));
  register_variable("bias", Param(init::zeros({n})));
  register_variable("mean", BatchStat(init::zeros({n})));
  register_variable("var", BatchStat(init::ones({n})));
}

at::Tensor BatchNorm::forward(const at::Tensor& x) {
  bool ok = spatial_dims == 2 ? x.dim() == 4 : (x.dim() == 2 || x.dim() == 3);
  NNX_CHECK(ok && x.size(1) == num_features, describe(), ": expected input ",
            spatial_dims == 2 ? "[N, " : "[N, ", num_features, spatial_dims == 2 ? ", H, W]" : "(, L)]",
            ", got ", format_shape(x.sizes()));
  // Training updates the running statistics in place: through the write fence.
  const at::Tensor& mean = is_training() ? variable("mean").mutable_value() : variable("mean").value();
  const at::Tensor& var = is_training() ? variable("var").mutable_value() : variable("var").value();
  return at::batch_norm(x, variable("scale").value(), variable("bias").value(), mean, var, is_training(), momentum,
                        eps, /*cudnn_enabled=*/true);
}

nlohmann::json BatchNorm::config() const {
  return {{"num_features", num_features}, {"momentum", momentum}, {"eps", eps}};
}

LayerNorm::LayerNorm(int64_t d, double e) : dim(d), eps(e) {
  NNX_CHECK(d > 0, "LayerNorm needs dim > 0, got ", d);
  register_variable("scale", Param(init::ones({d})));
  register_variable("bias", Param(init::zeros({d})));
}

at::Tensor LayerNorm::forward(const at::Tensor& x) {
  NNX_CHECK(x.dim() >= 1 && x.size(-1) == dim, describe(), ": expected input [..., ", dim,
            "], got ", format_shape(x.sizes()));
  return at::layer_norm(x, {dim}, variable("scale").value(), variable("bias").value(), eps);
}

nlohmann::json LayerNorm::config() const { return {{"dim", dim}, {"eps", eps}}; }

Dropout::Dropout(double r, Rngs& rngs) : rate(r) {
  NNX_CHECK(r >= 0.0 && r < 1.0, "Dropout rate must be in [0, 1), got ", r);
  register_module("rng", rngs.stream("dropout"));
}

at::Tensor Dropout::forward(const at::Tensor& x) {
  if (!is_training() || rate == 0.0) return x;
  auto gen = child<RngStream>("rng").next_generator(x.device());
  at::Tensor keep = at::empty_like(x).bernoulli_(1.0 - rate, gen);
  return x * keep / (1.0 - rate);
}

nlohmann::json Dropout::config() const { return {{"rate", rate}}; }

Embedding::Embedding(int64_t n, int64_t f, Rngs& rngs, init::Scheme s)
    : num_embeddings(n), features(f), scheme(s) {
  NNX_CHECK(n > 0 && f > 0, "Embedding needs positive sizes, got num_embeddings=", n,
            " features=", f);
  // PyTorch: N(0, 1) (torch.nn.Embedding); Flax: variance_scaling(1, fan_in, normal) -> std
  // 1/sqrt(features).
  double std = s == init::Scheme::kPyTorch ? 1.0 : 1.0 / std::sqrt(static_cast<double>(f));
  register_variable("embedding", Param(init::normal({n, f}, std, *rngs.stream("params"))));
}

at::Tensor Embedding::forward(const at::Tensor& ids) {
  NNX_CHECK(!at::isFloatingType(ids.scalar_type()), describe(), ": expected integer ids, got ",
            ids.scalar_type());
  return at::embedding(variable("embedding").value(), ids);
}

at::Tensor Embedding::attend(const at::Tensor& x) const {
  NNX_CHECK(x.dim() >= 1 && x.size(-1) == features, describe(), ": attend expects [..., ",
            features, "], got ", format_shape(x.sizes()));
  return at::matmul(x, variable("embedding").value().t());
}

nlohmann::json Embedding::config() const {
  return {{"num_embeddings", num_embeddings}, {"features", features},
          {"init", init::to_string(scheme)}};
}

MultiHeadAttention::MultiHeadAttention(int64_t d, int64_t h, Rngs& rngs, bool c, init::Scheme s)
    : d_model(d), num_heads(h), causal(c), scheme(s) {
  NNX_CHECK(d > 0 && h > 0 && d % h == 0, "MultiHeadAttention: d_model (", d,
            ") must be a positive multiple of num_heads (", h, ")");
  register_module("qkv", std::make_shared<Linear>(d, 3 * d, rngs, true, s));
  register_module("out", std::make_shared<Linear>(d, d, rngs, true, s));
}

at::Tensor MultiHeadAttention::forward(const at::Tensor& x) {
  NNX_CHECK(x.dim() == 3 && x.size(2) == d_model, describe(), ": expected input [B, T, ", d_model,
            "], got ", format_shape(x.sizes()));
  const int64_t B = x.size(0), T = x.size(1), hd = d_model / num_heads;
  auto qkv = child<Linear>("qkv").forward(x).view({B, T, 3, num_heads, hd}).permute({2, 0, 3, 1, 4});
  auto q = qkv[0], k = qkv[1], v = qkv[2];  // [B, H, T, hd]
  auto scores = at::matmul(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(hd));
  if (causal) {
    auto mask = at::ones({T, T}, x.options().dtype(at::kBool)).triu(1);
    scores = scores.masked_fill(mask, -std::numeric_limits<float>::infinity());
  }
  auto y = at::matmul(at::softmax(scores, -1), v);  // [B, H, T, hd]
  y = y.transpose(1, 2).reshape({B, T, d_model});
  return child<Linear>("out").forward(y);
}

nlohmann::json MultiHeadAttention::config() const {
  return {{"d_model", d_model}, {"num_heads", num_heads}, {"causal", causal},
          {"init", init::to_string(scheme)}};
}

at::Tensor ReLU::forward(const at::Tensor& x) { return at::relu(x); }
at::Tensor GELU::forward(const at::Tensor& x) { return at::gelu(x); }
at::Tensor Flatten::forward(const at::Tensor& x) {
  NNX_CHECK(x.dim() > start_dim, describe(), ": cannot flatten from dim ", start_dim, " of ",
            format_shape(x.sizes()));
  return x.flatten(start_dim);
}
nlohmann::json Flatten::config() const { return {{"start_dim", start_dim}}; }

namespace detail {
void register_builtin_layers() {
  static std::once_flag once;
  std::call_once(once, [] {
    using J = nlohmann::json;
    auto scheme = [](const J& c) { return init::scheme_from_string(c.value("init", "pytorch")); };
    ModuleRegistry::add("Linear", [scheme](const J& c, Rngs& r) {
      return std::make_shared<Linear>(c.at("in_features"), c.at("out_features"), r, c.value("use_bias", true),
                                      scheme(c), dtype_from_name(c.value("dtype", "float32")));
    });
    ModuleRegistry::add("Conv2d", [scheme](const J& c, Rngs& r) {
      return std::make_shared<Conv2d>(c.at("in_channels"), c.at("out_channels"),
                                      c.at("kernel_size"), r, c.value("stride", 1),
                                      c.value("padding", 0), c.value("use_bias", true), scheme(c));
    });
    ModuleRegistry::add("MaxPool2d", [](const J& c, Rngs&) {
      return std::make_shared<MaxPool2d>(c.at("kernel_size"), c.value("stride", 0));
    });
    ModuleRegistry::add("BatchNorm1d", [](const J& c, Rngs&) {
      return std::make_shared<BatchNorm>(c.at("num_features"), 0, c.value("momentum", 0.1),
                                         c.value("eps", 1e-5));
    });
    ModuleRegistry::add("BatchNorm2d", [](const J& c, Rngs&) {
      return std::make_shared<BatchNorm>(c.at("num_features"), 2, c.value("momentum", 0.1),
                                         c.value("eps", 1e-5));
    });
    ModuleRegistry::add("LayerNorm", [](const J& c, Rngs&) {
      return std::make_shared<LayerNorm>(c.at("dim"), c.value("eps", 1e-5));
    });
    ModuleRegistry::add("Dropout",
                        [](const J& c, Rngs& r) { return std::make_shared<Dropout>(c.at("rate"), r); });
    ModuleRegistry::add("Embedding", [scheme](const J& c, Rngs& r) {
      return std::make_shared<Embedding>(c.at("num_embeddings"), c.at("features"), r, scheme(c));
    });
    ModuleRegistry::add("MultiHeadAttention", [scheme](const J& c, Rngs& r) {
      return std::make_shared<MultiHeadAttention>(c.at("d_model"), c.at("num_heads"), r,
                                                  c.value("causal", true), scheme(c));
    });
    ModuleRegistry::add("ReLU", [](const J&, Rngs&) { return std::make_shared<ReLU>(); });
    ModuleRegistry::add("GELU", [](const J&, Rngs&) { return std::make_shared<GELU>(); });
    ModuleRegistry::add("Flatten", [](const J& c, Rngs&) {
      return std::make_shared<Flatten>(c.value("start_dim", 1));
    });
    ModuleRegistry::add("Rngs", [](const J& c, Rngs&) {
      std::map<std::string, uint64_t> streams;
      for (const auto& n : c.at("streams")) streams[n.get<std::string>()] = 0;
      return std::make_shared<Rngs>(streams);
    });
    ModuleRegistry::add("RngStream", [](const J&, Rngs&) { return std::make_shared<RngStream>(0); });
  });
}
}  // namespace detail

}  // namespace nnx
