// Rngs: named random streams whose key and counter are state (nnx.Rngs).
#pragma once

#include <ATen/core/Generator.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "nnx/framework/module.h"

namespace nnx {

/// One named stream: an RngKey (int64 scalar) and an RngCount (int64 scalar), both kept on the
/// host. A draw derives a seed from (key, count) with XXH64, then increments count; restoring
/// the two variables reproduces every later draw.
class RngStream : public ModuleBase<RngStream> {
 public:
  /// A stream with key `key` and count 0.
  explicit RngStream(uint64_t key);
  /// The next seed: XXH64(key, count); count += 1. In abstract mode returns 0 and does not
  /// advance.
  uint64_t next_seed();
  /// A generator for `device` seeded by next_seed().
  at::Generator next_generator(const c10::Device& device = c10::Device(c10::kCPU));
  /// A new stream with key XXH64(key, count, index) and count 0; does not advance this one.
  std::shared_ptr<RngStream> fork(uint64_t index) const;
  uint64_t key() const;
  uint64_t count() const;
  /// Mixes `salt` into every seed (not state): data-parallel ranks salt their dropout stream
  /// with their rank, so masks differ per rank while key and count stay replicated and each
  /// rank's draws stay reproducible from the restored state. 0 = no salt.
  void set_salt(uint64_t salt) { salt_ = salt; }
  std::string type_name() const override { return "RngStream"; }

 private:
  uint64_t salt_ = 0;
};

/// Named streams ("params", "dropout", ...). A name without its own stream falls back to
/// "default" when there is one. Register an Rngs in a model (register_module("rngs", rngs)) to
/// have its streams checkpointed as rngs/<stream>/key and rngs/<stream>/count.
class Rngs : public ModuleBase<Rngs> {
 public:
  /// One stream, "default", with key `seed` (nnx.Rngs(0)).
  explicit Rngs(uint64_t seed);
  /// One stream per entry: Rngs({{"params", 0}, {"dropout", 1}}).
  explicit Rngs(const std::map<std::string, uint64_t>& streams);
  /// The stream `name`, or "default"; throws nnx::Error naming both when neither exists.
  std::shared_ptr<RngStream> stream(const std::string& name) const;
  /// Flax's rngs.params() / rngs.dropout(): the stream of that name (or "default"); throws as
  /// stream() does. E.g. init::normal(shape, 0.02, rngs.params()).
  RngStream& params() const { return *stream("params"); }
  RngStream& dropout() const { return *stream("dropout"); }
  /// Shorthand for stream(name)->next_seed().
  uint64_t next_seed(const std::string& name) { return stream(name)->next_seed(); }
  /// Independent streams for a layer or a rank: every stream forked with `index`.
  std::shared_ptr<Rngs> fork(uint64_t index) const;
  std::string type_name() const override { return "Rngs"; }
  /// {"streams": [names]} (keys and counts are state, not config).
  nlohmann::json config() const override;

 private:
  Rngs() = default;
};

}  // namespace nnx
