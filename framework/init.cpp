#include "nnx/framework/init.h"

#include <ATen/ATen.h>

#include <cmath>

#include "nnx/framework/error.h"
#include "nnx/framework/rngs.h"

namespace nnx {

namespace {
thread_local bool g_abstract = false;
at::Tensor meta(at::IntArrayRef shape, at::ScalarType dtype) {
  return at::empty(shape, at::TensorOptions().dtype(dtype).device(at::kMeta));
}
}  // namespace

bool is_abstract() { return g_abstract; }
AbstractScope::AbstractScope() : previous_(g_abstract) { g_abstract = true; }
AbstractScope::~AbstractScope() { g_abstract = previous_; }

namespace init {

Scheme scheme_from_string(const std::string& name) {
  if (name == "pytorch") return Scheme::kPyTorch;
  if (name == "lecun") return Scheme::kLecun;
  NNX_CHECK(false, "unknown init scheme '", name, "' (expected 'pytorch' or 'lecun')");
  return Scheme::kPyTorch;
}

std::string to_string(Scheme scheme) { return scheme == Scheme::kPyTorch ? "pytorch" : "lecun"; }

at::Tensor zeros(at::IntArrayRef shape, at::ScalarType dtype) {
  return is_abstract() ? meta(shape, dtype) : at::zeros(shape, at::TensorOptions().dtype(dtype));
}

at::Tensor ones(at::IntArrayRef shape, at::ScalarType dtype) {
  return is_abstract() ? meta(shape, dtype) : at::ones(shape, at::TensorOptions().dtype(dtype));
}

at::Tensor uniform(at::IntArrayRef shape, double low, double high, RngStream& rng,
                   at::ScalarType dtype) {
  if (is_abstract()) return meta(shape, dtype);
  auto gen = rng.next_generator();
  return at::empty(shape, at::TensorOptions().dtype(at::kFloat)).uniform_(low, high, gen).to(dtype);
}

at::Tensor normal(at::IntArrayRef shape, double std, RngStream& rng, at::ScalarType dtype) {
  if (is_abstract()) return meta(shape, dtype);
  auto gen = rng.next_generator();
  return at::empty(shape, at::TensorOptions().dtype(at::kFloat)).normal_(0.0, std, gen).to(dtype);
}

at::Tensor lecun_normal(at::IntArrayRef shape, int64_t fan_in, RngStream& rng,
                        at::ScalarType dtype) {
  NNX_CHECK(fan_in > 0, "lecun_normal needs fan_in > 0, got ", fan_in);
  if (is_abstract()) return meta(shape, dtype);
  // Inverse-CDF sampling of a standard normal truncated to [-2, 2].
  const double lo = 0.5 * std::erfc(2.0 / std::sqrt(2.0));  // Phi(-2)
  const double hi = 1.0 - lo;                               // Phi(2)
  const double stddev = std::sqrt(1.0 / static_cast<double>(fan_in)) / 0.87962566103423978;
  auto gen = rng.next_generator();
  auto u = at::empty(shape, at::TensorOptions().dtype(at::kDouble)).uniform_(lo, hi, gen);
  auto z = at::erfinv(u * 2.0 - 1.0) * std::sqrt(2.0);
  return (z * stddev).to(dtype);
}

}  // namespace init
}  // namespace nnx
