#include "nnx/trainer/registry.h"

#include <deque>
#include <mutex>

#include "nnx/framework/error.h"

namespace nnx::trainer {

namespace {

nlohmann::json mlp_options(OptionReader& m) {
  nlohmann::json o;
  o["init"] = m.one_of("init", "pytorch", {"pytorch", "lecun"});
  o["hidden"] = m.integers("hidden", {256, 128});
  for (auto h : o["hidden"])
    if (h.get<int64_t>() <= 0) m.fail("hidden", " entries must be positive");
  o["dropout"] = m.number("dropout", 0.0, 0.0, 0.99);
  return o;
}

nlohmann::json cnn_options(OptionReader& m) {
  nlohmann::json o;
  o["init"] = m.one_of("init", "pytorch", {"pytorch", "lecun"});
  auto ch = m.integers("channels", {32, 64});
  if (ch.size() != 2 || ch[0] <= 0 || ch[1] <= 0) m.fail("channels", " must be 2 positive integers");
  o["channels"] = ch;
  o["hidden"] = m.integer("hidden", 128, 1, 1 << 20);
  o["dropout"] = m.number("dropout", 0.25, 0.0, 0.99);
  o["bn_momentum"] = m.number("bn_momentum", 0.1, 0.0, 1.0);
  return o;
}

nlohmann::json gpt_options(OptionReader& m) {
  nlohmann::json o;
  o["init"] = m.one_of("init", "pytorch", {"pytorch", "lecun"});
  o["d_model"] = m.integer("d_model", 128, 1, 1 << 16);
  o["num_heads"] = m.integer("num_heads", 4, 1, 1024);
  o["num_layers"] = m.integer("num_layers", 2, 1, 1024);
  o["dropout"] = m.number("dropout", 0.1, 0.0, 0.99);
  if (o["d_model"].get<int64_t>() % o["num_heads"].get<int64_t>() != 0)
    m.fail("num_heads", " must divide model.d_model (" + std::to_string(o["d_model"].get<int64_t>()) + ")");
  return o;
}

// The built-in models, one entry each: their keys, and the ModuleRegistry type built from them
// and the data's sizes (run.cpp), so that parsing a config needs no libtorch.
std::vector<ModelType> builtin_model_types() {
  return {{"mlp", {"fashion_mnist", "synthetic"}, mlp_options, nullptr, "MLP",
           {{"in_features", DataSize::kInFeatures}, {"num_classes", DataSize::kNumClasses}}},
          {"cnn", {"fashion_mnist"}, cnn_options, nullptr, "CNN", {{"num_classes", DataSize::kNumClasses}}},
          {"gpt", {"text"}, gpt_options, nullptr, "GPT",
           {{"vocab_size", DataSize::kVocabSize}, {"block_size", DataSize::kBlockSize}}}};
}

const std::vector<std::string> kBuiltinDatasets = {"fashion_mnist", "synthetic", "text"};

struct Registry {
  std::mutex mu;
  // deques: the references model_type() and find_dataset() return stay valid as types are added.
  std::deque<ModelType> models;
  std::deque<DatasetType> datasets;
  Registry() {
    for (auto& t : builtin_model_types()) models.push_back(std::move(t));
  }
};

Registry& registry() {
  static Registry r;
  return r;
}

}  // namespace

void register_model_type(ModelType type) {
  NNX_CHECK(!type.name.empty(), "register_model_type: the model type needs a name (model.type)");
  NNX_CHECK(type.build || !type.module.empty(), "register_model_type('", type.name,
            "'): build is missing (or a ModuleRegistry type in module)");
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  for (const auto& m : r.models)
    NNX_CHECK(m.name != type.name, "register_model_type: model.type '", type.name, "' is already registered");
  r.models.push_back(std::move(type));
}

void register_dataset(DatasetType type) {
  NNX_CHECK(!type.name.empty(), "register_dataset: the dataset needs a name (data.dataset)");
  NNX_CHECK(static_cast<bool>(type.load), "register_dataset('", type.name, "'): load is missing");
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  for (const auto& n : kBuiltinDatasets)
    NNX_CHECK(n != type.name, "register_dataset: data.dataset '", type.name, "' is built in");
  for (const auto& d : r.datasets)
    NNX_CHECK(d.name != type.name, "register_dataset: data.dataset '", type.name, "' is already registered");
  r.datasets.push_back(std::move(type));
}

const ModelType& model_type(const std::string& name) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  std::string known;
  for (const auto& m : r.models) {
    if (m.name == name) return m;
    known += (known.empty() ? "" : ", ") + m.name;
  }
  NNX_CHECK(false, "unknown model type '", name, "' (expected ", known, ")");
  return r.models.front();
}

std::vector<std::string> model_type_names() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  std::vector<std::string> out;
  for (const auto& m : r.models) out.push_back(m.name);
  return out;
}

const DatasetType* find_dataset(const std::string& name) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  for (const auto& d : r.datasets)
    if (d.name == name) return &d;
  return nullptr;
}

std::vector<std::string> dataset_names() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  std::vector<std::string> out = kBuiltinDatasets;
  for (const auto& d : r.datasets) out.push_back(d.name);
  return out;
}

}  // namespace nnx::trainer
