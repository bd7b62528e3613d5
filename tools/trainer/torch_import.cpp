#include "tools/trainer/torch_import.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <set>

#include "nnx/framework/error.h"
#include "nnx/framework/graph.h"

#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/import_read.h>
#include <torch/csrc/jit/serialization/pickle.h>

namespace nnx::trainer {

// Loads a torch.save'd state dict and writes its tensors into `model`'s params through
// `mapping_path`: {"torch.name": "nnx/path"} or {"torch.name": {"path": "nnx/path",
// "transpose": true}}, plus an optional "ignore": [names]. Every Param must be covered and every
// tensor mapped or ignored; shapes and dtypes must match.
void load_torch_params(Module& model, const std::string& dict_path, const std::string& mapping_path) {
  std::ifstream in(dict_path, std::ios::binary);
  NNX_CHECK(in.good(), "cannot read PyTorch state dict '", dict_path, "'");
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  c10::IValue iv;
  try {
    if (bytes.size() > 4 && bytes[0] == 'P' && bytes[1] == 'K') {
      // torch.save's default (zip) format: archive/data.pkl plus one record per storage.
      caffe2::serialize::PyTorchStreamReader reader(dict_path);
      iv = torch::jit::readArchiveAndTensors("data", "", "data/", c10::nullopt, c10::nullopt, c10::nullopt, reader);
    } else {
      iv = torch::jit::pickle_load(bytes);  // the legacy format (and nnx-ckpt export's)
    }
  } catch (const c10::Error& e) {
    NNX_CHECK(false, "'", dict_path, "' is not a readable torch.save'd dict of tensors (libtorch cannot read the "
              "OrderedDict that state_dict() returns; save torch.save(dict(model.state_dict()), path)): ",
              e.what_without_backtrace());
  }
  // libtorch 1.13's unpickler turns collections.OrderedDict (what state_dict() returns) into None.
  NNX_CHECK(!iv.isNone(), "'", dict_path, "' holds an OrderedDict, which libtorch cannot read; save a plain dict: "
            "torch.save(dict(model.state_dict()), path)");
  NNX_CHECK(iv.isGenericDict(), "'", dict_path, "' holds a ", iv.tagKind(), ", not a dict of tensors");
  std::ifstream mf(mapping_path);
  NNX_CHECK(mf.good(), "cannot read name mapping '", mapping_path, "'");
  auto mapping = nlohmann::json::parse(mf, nullptr, false);
  NNX_CHECK(!mapping.is_discarded() && mapping.is_object(), "'", mapping_path, "' is not a JSON object");
  std::set<std::string> ignore;
  if (mapping.contains("ignore")) ignore = mapping["ignore"].get<std::set<std::string>>();
  State params = state(model, Param), loaded;
  for (const auto& kv : iv.toGenericDict()) {
    const std::string name = kv.key().toStringRef();
    if (ignore.count(name)) continue;
    NNX_CHECK(mapping.contains(name), "'", dict_path, "' tensor '", name, "' is not in the mapping '", mapping_path,
              "' (map it, or list it under \"ignore\")");
    const auto& m = mapping[name];
    const std::string path = m.is_string() ? m.get<std::string>() : m.at("path").get<std::string>();
    const bool transpose = m.is_object() && m.value("transpose", false);
    NNX_CHECK(params.contains(path), "mapping '", mapping_path, "': '", name, "' -> '", path, "', which is not a Param of the model");
    at::Tensor t = kv.value().toTensor().detach();
    if (transpose) t = t.t().contiguous();
    const at::Tensor& want = params.at(path).value;
    NNX_CHECK(t.sizes() == want.sizes(), "'", name, "' -> '", path, "': PyTorch shape ", format_shape(t.sizes()), ", model ",
              format_shape(want.sizes()), transpose ? "" : " (a Linear weight needs \"transpose\": true)");
    NNX_CHECK(t.scalar_type() == want.scalar_type(), "'", name, "' -> '", path, "': dtype ", t.scalar_type(), ", model ",
              want.scalar_type());
    NNX_CHECK(!loaded.contains(path), "mapping '", mapping_path, "': two tensors map to '", path, "'");
    loaded.insert(path, {Param, t, params.at(path).metadata});
  }
  for (const auto& [path, vs] : params)
    NNX_CHECK(loaded.contains(path), "'", dict_path, "' has no tensor for the model's param '", path, "' (mapping '", mapping_path, "')");
  update(model, loaded);
}

}  // namespace nnx::trainer
