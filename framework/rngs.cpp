#include "nnx/framework/rngs.h"

#include <ATen/ATen.h>
#include <xxhash.h>

#include <nlohmann/json.hpp>

#include "nnx/framework/compat.h"
#include "nnx/framework/init.h"

namespace nnx {

namespace {
uint64_t hash_words(std::initializer_list<uint64_t> words) {
  std::vector<uint64_t> w(words);
  return XXH64(w.data(), w.size() * sizeof(uint64_t), /*seed=*/0x6e6e78);
}
at::Tensor scalar_i64(uint64_t v) {
  if (is_abstract()) return at::empty({}, at::TensorOptions().dtype(at::kLong).device(at::kMeta));
  return at::scalar_tensor(static_cast<int64_t>(v), at::TensorOptions().dtype(at::kLong));
}
uint64_t read_i64(const at::Tensor& t) {
  NNX_CHECK(!t.is_meta(), "drawing from an abstract Rngs stream (restore it first)");
  return static_cast<uint64_t>(t.item<int64_t>());
}
}  // namespace

RngStream::RngStream(uint64_t key) {
  register_variable("key", RngKey(scalar_i64(key)));
  register_variable("count", RngCount(scalar_i64(0)));
}

uint64_t RngStream::key() const { return read_i64(variable("key").value()); }
uint64_t RngStream::count() const { return read_i64(variable("count").value()); }

uint64_t RngStream::next_seed() {
  if (is_abstract()) return 0;
  Variable& c = variable("count");
  uint64_t n = read_i64(c.value());
  uint64_t seed = salt_ == 0 ? hash_words({key(), n}) : hash_words({key(), n, salt_});
  c.set_value(at::scalar_tensor(static_cast<int64_t>(n + 1), at::TensorOptions().dtype(at::kLong)));
  return seed;
}

at::Generator RngStream::next_generator(const c10::Device& device) {
  return compat::make_generator(device, next_seed());
}

std::shared_ptr<RngStream> RngStream::fork(uint64_t index) const {
  if (is_abstract()) return std::make_shared<RngStream>(0);
  return std::make_shared<RngStream>(hash_words({key(), count(), index, 0x666f726bULL}));
}

Rngs::Rngs(uint64_t seed) { register_module("default", std::make_shared<RngStream>(seed)); }

Rngs::Rngs(const std::map<std::string, uint64_t>& streams) {
  NNX_CHECK(!streams.empty(), "Rngs needs at least one stream");
  for (const auto& [name, key] : streams) register_module(name, std::make_shared<RngStream>(key));
}

std::shared_ptr<RngStream> Rngs::stream(const std::string& name) const {
  if (has_child(name)) return std::dynamic_pointer_cast<RngStream>(child_ptr(name));
  NNX_CHECK(has_child("default"), "Rngs has no stream '", name, "' and no 'default' stream");
  return std::dynamic_pointer_cast<RngStream>(child_ptr("default"));
}

nlohmann::json Rngs::config() const {
  nlohmann::json names = nlohmann::json::array();
  for (const auto& s : slots()) names.push_back(s.name);
  return {{"streams", names}};
}

std::shared_ptr<Rngs> Rngs::fork(uint64_t index) const {
  std::shared_ptr<Rngs> out(new Rngs());
  for (const auto& s : slots())
    out->register_module(s.name, std::dynamic_pointer_cast<RngStream>(s.child)->fork(index));
  return out;
}

}  // namespace nnx
