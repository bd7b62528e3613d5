// The model types of nnx_models, listed once (header-only: nnx-train's config validation
// uses it without linking the models).
#pragma once

#include <string>
#include <vector>

#include "nnx/framework/error.h"

namespace nnx::models {

/// A model type: its name in nnx-train's config and its ModuleRegistry type.
struct ModelType {
  std::string config_name;    ///< "mlp"
  std::string registry_type;  ///< "MLP"
};

/// The model types of this library, the one list of them: MLP, CNN, GPT.
inline const std::vector<ModelType>& model_types() {
  static const std::vector<ModelType> types = {{"mlp", "MLP"}, {"cnn", "CNN"}, {"gpt", "GPT"}};
  return types;
}

/// The config names, in order ("mlp", "cnn", "gpt").
inline std::vector<std::string> model_config_names() {
  std::vector<std::string> out;
  for (const auto& t : model_types()) out.push_back(t.config_name);
  return out;
}

/// The registry type of config name `config_name` ("mlp" -> "MLP"); throws nnx::Error naming
/// the known names.
inline const std::string& registry_type(const std::string& config_name) {
  for (const auto& t : model_types())
    if (t.config_name == config_name) return t.registry_type;
  std::string known;
  for (const auto& n : model_config_names()) known += (known.empty() ? "" : ", ") + n;
  NNX_CHECK(false, "unknown model type '", config_name, "' (expected ", known, ")");
  return model_types().front().registry_type;
}

}  // namespace nnx::models
