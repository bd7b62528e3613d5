#include "nnx/checkpoint/coordinator.h"

#include <ATen/ATen.h>

#include "nnx/framework/distributed.h"
#include "nnx/framework/error.h"

namespace nnx::checkpoint {

nlohmann::json LocalCoordinator::receive(const std::string& key) {
  auto it = messages_.find(key);
  NNX_INTERNAL_ASSERT(it != messages_.end(), "no message under '", key, "'");
  return it->second;
}

int C10dCoordinator::rank() const { return group_->rank(); }
int C10dCoordinator::world_size() const { return group_->world_size(); }

void C10dCoordinator::publish(const std::string& key, const nlohmann::json& message) {
  group_->store_set(key, message.dump());
}

nlohmann::json C10dCoordinator::receive(const std::string& key) {
  const std::string text = group_->store_get(key);
  auto j = nlohmann::json::parse(text, nullptr, false);
  NNX_CHECK(!j.is_discarded(), "the message under '", key, "' is not JSON: '", text, "'");
  return j;
}

bool C10dCoordinator::any(bool flag) {
  std::vector<at::Tensor> v = {at::full({1}, flag ? 1 : 0, at::kInt)};
  group_->all_reduce_sum(v);
  return v[0].item<int>() > 0;
}

bool C10dCoordinator::all_equal(int64_t value) {
  // max(h) == -max(-h) exactly when every rank's h is the same.
  std::vector<at::Tensor> v = {at::tensor({value, -value}, at::kLong)};
  group_->all_reduce_max(v);
  return v[0][0].item<int64_t>() == -v[0][1].item<int64_t>();
}

}  // namespace nnx::checkpoint
