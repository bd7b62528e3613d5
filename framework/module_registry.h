// Module types built by name from their config: how a GraphDef's JSON becomes modules again.
#pragma once

#include <nlohmann/json.hpp>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace nnx {

class Module;
class Rngs;

/// Builds registered module types from (type name, config). Layers and models register
/// themselves; users add their own with NNX_REGISTER_MODULE or ModuleRegistry::add.
class ModuleRegistry {
 public:
  using Factory = std::function<std::shared_ptr<Module>(const nlohmann::json& config, Rngs& rngs)>;
  /// Registers `factory` for `type`; throws nnx::Error if `type` is taken.
  static void add(const std::string& type, Factory factory);
  static bool contains(const std::string& type);
  /// Builds a `type` from `config`; throws nnx::Error naming the type (and the known ones) when
  /// it is not registered.
  static std::shared_ptr<Module> create(const std::string& type, const nlohmann::json& config,
                                        Rngs& rngs);
  static std::vector<std::string> types();
};

/// Registers a module type at static-initialisation time from a factory expression.
#define NNX_REGISTER_MODULE(TYPE_NAME, FACTORY)                                   \
  static const bool nnx_registered_##TYPE_NAME = [] {                             \
    ::nnx::ModuleRegistry::add(#TYPE_NAME, FACTORY);                              \
    return true;                                                                  \
  }()

}  // namespace nnx
