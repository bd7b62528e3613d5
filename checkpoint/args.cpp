#include "nnx/checkpoint/args.h"

#include "nnx/checkpoint/format/schema.h"
#include "nnx/checkpoint/handlers/registry.h"
#include "nnx/framework/error.h"

namespace nnx::checkpoint {

Composite::Composite(std::initializer_list<std::pair<std::string, ItemArgs>> items) {
  for (const auto& [name, args] : items) add(name, args);
}

Composite& Composite::add(const std::string& name, ItemArgs args) {
  NNX_CHECK(!name.empty() && name != schema::kJsonGroup && name.find('/') == std::string::npos,
            "invalid checkpoint item name '", name, "'");
  for (const auto& [n, a] : items_) NNX_CHECK(n != name, "checkpoint item '", name, "' given twice");
  items_.emplace_back(name, std::move(args));
  return *this;
}

int64_t Composite::nbytes() const {
  int64_t n = 0;
  const auto& registry = HandlerRegistry::global();
  for (const auto& [name, a] : items_)
    if (const ItemHandler* h = registry.find_save(a)) n += h->nbytes(a);
  return n;
}

const State& Restored::state(const std::string& item) const {
  auto it = states.find(item);
  NNX_CHECK(it != states.end(), "item '", item, "' was not restored");
  return it->second;
}

const nlohmann::json& Restored::json_item(const std::string& item) const {
  auto it = json.find(item);
  NNX_CHECK(it != json.end(), "JSON item '", item, "' was not restored");
  return it->second;
}

void Restored::missing(const std::string& item) {
  throw Error("item '" + item + "' was not restored, or not as the type asked for", __FILE__, __LINE__);
}

}  // namespace nnx::checkpoint
