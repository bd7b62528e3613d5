// Initialisers (PyTorch's defaults and NNX's lecun_normal) and the abstract (meta) mode of eval_shape.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace nnx {

class RngStream;

/// True while an AbstractScope is alive on this thread: initialisers return meta tensors.
bool is_abstract();

/// RAII: inside, every nnx initialiser returns a tensor on the `meta` device (shape and dtype,
/// no data), and Rngs draws do not advance. eval_shape() opens one.
class AbstractScope {
 public:
  AbstractScope();
  ~AbstractScope();
  AbstractScope(const AbstractScope&) = delete;
  AbstractScope& operator=(const AbstractScope&) = delete;

 private:
  bool previous_;
};

namespace init {

/// Which default initialisation a layer uses.
enum class Scheme {
  kPyTorch,  ///< torch.nn defaults: kaiming_uniform(a=sqrt(5)) -> U(+-1/sqrt(fan_in)) weights,
             ///< U(+-1/sqrt(fan_in)) biases (torch.nn.Linear.reset_parameters)
  kLecun,    ///< Flax NNX defaults: lecun_normal kernels (truncated normal, std 1/sqrt(fan_in)),
             ///< zero biases (flax.nnx.initializers)
};
/// "pytorch" or "lecun"; throws nnx::Error naming the value otherwise.
Scheme scheme_from_string(const std::string& name);
std::string to_string(Scheme scheme);

/// Zeros of `shape` (meta in abstract mode).
at::Tensor zeros(at::IntArrayRef shape, at::ScalarType dtype = at::kFloat);
/// Ones of `shape` (meta in abstract mode).
at::Tensor ones(at::IntArrayRef shape, at::ScalarType dtype = at::kFloat);
/// U(low, high) drawn from one draw of `rng`.
at::Tensor uniform(at::IntArrayRef shape, double low, double high, RngStream& rng,
                   at::ScalarType dtype = at::kFloat);
/// N(0, std^2) drawn from one draw of `rng`.
at::Tensor normal(at::IntArrayRef shape, double std, RngStream& rng,
                  at::ScalarType dtype = at::kFloat);
/// Flax's lecun_normal: variance_scaling(1, fan_in, truncated_normal): a normal truncated to
/// [-2, 2] standard deviations, scaled so the std is 1/sqrt(fan_in)
/// (jax.nn.initializers.variance_scaling, constant 0.87962566103423978).
at::Tensor lecun_normal(at::IntArrayRef shape, int64_t fan_in, RngStream& rng,
                        at::ScalarType dtype = at::kFloat);

}  // namespace init
}  // namespace nnx
