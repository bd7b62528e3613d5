// What nnx-train can train: model types (model.type) and datasets (data.dataset), the built-in
// ones and those a user's program registers before it calls nnx::trainer::train_main().
#pragma once

#include <nlohmann/json.hpp>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "nnx/trainer/config.h"
#include "nnx/trainer/option_reader.h"

namespace nnx {
class Module;
class Rngs;
}  // namespace nnx

// Declarations only: config parsing (and its fuzz target) builds without libtorch. A program that
// registers a type includes nnx/trainer/datasets.h and its modules' headers too.
namespace nnx::trainer {

struct Datasets;

/// A size that the loaded data (or data.block_size) gives a model's options: a dataset binding.
enum class DataSize {
  kInFeatures,  ///< Datasets::in_features
  kNumClasses,  ///< Datasets::num_classes
  kVocabSize,   ///< Datasets::vocab_size
  kBlockSize,   ///< data.block_size (the text datasets' sequence length)
};

/// A model type that nnx-train builds from `model:` in the YAML config.
///
/// The module's forward(x) takes a batch of the dataset's inputs and returns logits: [B, C] for
/// classes, or [B, T, V] for next-token targets [B, T]. nnx-train trains it with cross-entropy
/// against the dataset's targets, and evaluates loss and accuracy the same way. Dropout should
/// draw from a child Rngs named "rngs" (models::MLP does), which data parallel salts per rank.
struct ModelType {
  std::string name;  ///< model.type, e.g. "resmlp"
  /// The data.dataset values it trains on; the first is data.dataset's default. Empty: any.
  std::vector<std::string> datasets;
  /// Reads the type's own keys of `model:` (besides type and dtype) into its options. These
  /// are saved with every checkpoint and printed by --print-config; changing one makes a run's
  /// checkpoints unusable for resume (docs/config.md). Null: the type has no keys.
  std::function<nlohmann::json(OptionReader& model)> options;
  /// Builds the module: `options` as returned above, `data` the loaded datasets (their sizes),
  /// `rngs` the run's streams "params" (seed) and "dropout" (seed + 1). Throws nnx::Error for
  /// options that do not fit the data. Either `build` or `module` is required.
  std::function<std::shared_ptr<Module>(const nlohmann::json& options, const Datasets& data, const Config& config,
                                        std::shared_ptr<Rngs> rngs)>
      build;
  /// Without `build`: the ModuleRegistry type (framework/module_registry.h) nnx-train builds,
  /// from `options` with the `from_data` keys added (the built-ins: "MLP", "CNN", "GPT").
  std::string module;
  /// Without `build`: option keys set from the data before `module` is built, e.g.
  /// {"num_classes", DataSize::kNumClasses}.
  std::vector<std::pair<std::string, DataSize>> from_data;
};

/// A dataset that nnx-train loads from `data:` in the YAML config.
struct DatasetType {
  std::string name;  ///< data.dataset, e.g. "spirals"
  /// Reads the dataset's own keys of `data:` (beside the built-in ones: dataset, root, path,
  /// block_size, size, features, classes, shuffle, limit). Null: it has none.
  std::function<nlohmann::json(OptionReader& data)> options;
  /// Loads the train and eval splits and sets the sizes models are built for (in_features,
  /// num_classes...). `options` as returned above. Throws nnx::Error / nnx::IOError naming the file.
  std::function<Datasets(const nlohmann::json& options, const Config& config)> load;
};

/// Makes `type` trainable as model.type = type.name. Throws nnx::Error when the name is empty,
/// taken (the built-ins are mlp, cnn and gpt), or neither `build` nor `module` is given.
/// Thread-safe.
void register_model_type(ModelType type);

/// Makes `type` loadable as data.dataset = type.name. Throws nnx::Error when the name is empty,
/// taken (the built-ins are fashion_mnist, synthetic and text), or `load` is missing.
void register_dataset(DatasetType type);

/// The model type named `name`; throws nnx::Error listing the known names.
const ModelType& model_type(const std::string& name);
/// Every model type's name, built-ins first, then in registration order.
std::vector<std::string> model_type_names();

/// The registered (not built-in) dataset named `name`, or nullptr.
const DatasetType* find_dataset(const std::string& name);
/// Every dataset's name: fashion_mnist, synthetic, text, then the registered ones.
std::vector<std::string> dataset_names();

}  // namespace nnx::trainer
