#include "nnx/framework/module_registry.h"

#include <map>
#include <mutex>

#include "nnx/framework/error.h"
#include "nnx/framework/layers.h"  // the built-in layers register on the registry's first use

namespace nnx {

namespace {
struct Registry {
  std::mutex mu;
  std::map<std::string, ModuleRegistry::Factory> factories;
};
Registry& registry() {
  static Registry* r = new Registry();
  return *r;
}
}  // namespace

void ModuleRegistry::add(const std::string& type, Factory factory) {
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  NNX_CHECK(!r.factories.count(type), "module type '", type, "' is registered twice");
  r.factories.emplace(type, std::move(factory));
}

bool ModuleRegistry::contains(const std::string& type) {
  detail::register_builtin_layers();
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  return r.factories.count(type) > 0;
}

std::vector<std::string> ModuleRegistry::types() {
  detail::register_builtin_layers();
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  std::vector<std::string> out;
  for (const auto& [k, v] : r.factories) out.push_back(k);
  return out;
}

std::shared_ptr<Module> ModuleRegistry::create(const std::string& type,
                                               const nlohmann::json& config, Rngs& rngs) {
  detail::register_builtin_layers();
  Factory f;
  {
    auto& r = registry();
    std::lock_guard<std::mutex> lock(r.mu);
    auto it = r.factories.find(type);
    if (it == r.factories.end()) {
      std::string known;
      for (const auto& [k, v] : r.factories) known += (known.empty() ? "" : ", ") + k;
      NNX_CHECK(false, "module type '", type, "' is not registered (registered: ", known, ")");
    }
    f = it->second;
  }
  return f(config, rngs);
}

}  // namespace nnx
