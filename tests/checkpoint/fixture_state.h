// The state of the format fixtures in tests/data/checkpoints-v1 (written by the code of
// 2026-12-03, before the checkpoint layers were split): deterministic values from arange, so
// the test that restores the fixtures rebuilds what they must hold.
#pragma once

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "nnx/framework/sharding.h"
#include "nnx/framework/state.h"
#include "nnx/framework/variable.h"

namespace nnx::test {

/// The fixture's "state" item as rank `rank` of `world_size` holds it: a 1 MiB float32 Param
/// (the direct write path), a bfloat16 Param, a BatchStat, a bool mask, an int64 step, and a
/// ZeRO-1 style OptState sharded along dim 0 (1031 rows: uneven pieces), of which each rank
/// holds its shard (the whole array at world size 1).
inline State fixture_state(int rank = 0, int world_size = 1) {
  State s;
  s.insert("dense/kernel", {Param, (at::arange(512 * 512, at::kFloat) * 1e-3f - 7.0f).view({512, 512}), {}});
  s.insert("dense/bias_bf16", {Param, (at::arange(64 * 33, at::kFloat) * 0.25f - 100.0f).view({64, 33}).to(at::kBFloat16), {}});
  s.insert("norm/mean", {BatchStat, at::arange(17, at::kDouble) / 3.0, {}});
  s.insert("mask", {Param, at::arange(10, at::kLong).remainder(3).eq(0), {}});
  s.insert("step", {OptState, at::scalar_tensor(int64_t(7)), {}});
  const auto spec = PartitionSpec::sharded(0, 2);
  at::Tensor moment = (at::arange(1031 * 256, at::kFloat) * 1e-4f).view({1031, 256});
  s.insert("opt/mu", {OptState, shard_of(moment, spec, Mesh{rank, world_size}).clone(), {{kShardingKey, spec.to_string()}}});
  return s;
}

/// The fixture's JSON item.
inline nlohmann::json fixture_json() { return {{"epoch", 3}, {"name", "fixture"}, {"lr", 0.125}}; }

}  // namespace nnx::test
