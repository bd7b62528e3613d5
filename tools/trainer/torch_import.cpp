#include "nnx/trainer/torch_import.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <set>

#include "nnx/checkpoint/format/safetensors.h"
#include "nnx/framework/error.h"
#include "nnx/framework/graph.h"
#include "nnx/optim/optimizer.h"

#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/import_read.h>
#include <torch/csrc/jit/serialization/pickle.h>

namespace nnx::trainer {

namespace {

// The tensors of a torch.save'd dict (zip or legacy format), in the dict's order.
std::vector<std::pair<std::string, at::Tensor>> read_torch_dict(const std::string& dict_path, const std::vector<char>& bytes) {
  c10::IValue iv;
  try {
    if (bytes.size() > 4 && bytes[0] == 'P' && bytes[1] == 'K') {
      // torch.save's default (zip) format: archive/data.pkl plus one record per storage.
      caffe2::serialize::PyTorchStreamReader reader(dict_path);
      iv = torch::jit::readArchiveAndTensors("data", "", "data/", c10::nullopt, c10::nullopt, c10::nullopt, reader);
    } else {
      iv = torch::jit::pickle_load(bytes);  // the legacy format
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
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& kv : iv.toGenericDict()) {
    NNX_CHECK(kv.key().isString() && kv.value().isTensor(), "'", dict_path, "' holds a ", kv.value().tagKind(),
              " under a key; expected a dict of name -> tensor");
    out.emplace_back(kv.key().toStringRef(), kv.value().toTensor().detach());
  }
  return out;
}

// safetensors has no magic number: an 8-byte header length, then '{' (a torch zip starts "PK",
// a legacy pickle with 0x80); or the name says so. A bad header length is then safetensors'
// own error, not "not a torch.save'd dict".
bool looks_like_safetensors(const std::string& path, const std::vector<char>& bytes) {
  const std::string ext = ".safetensors";
  if (path.size() >= ext.size() && path.compare(path.size() - ext.size(), ext.size(), ext) == 0) return true;
  return bytes.size() >= 9 && bytes[8] == '{';
}

}  // namespace

NamedTensors read_named_tensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  NNX_CHECK(in.good(), "cannot read '", path, "'");
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (looks_like_safetensors(path, bytes))
    return {checkpoint::parse_safetensors(bytes.data(), bytes.size(), path).tensors, "safetensors"};
  return {read_torch_dict(path, bytes), "PyTorch"};
}

void load_params(Module& model, const NamedTensors& named, const std::string& file, const std::string& mapping_path) {
  std::ifstream mf(mapping_path);
  NNX_CHECK(mf.good(), "cannot read name mapping '", mapping_path, "'");
  auto mapping = nlohmann::json::parse(mf, nullptr, false);
  NNX_CHECK(!mapping.is_discarded() && mapping.is_object(), "'", mapping_path, "' is not a JSON object");
  std::set<std::string> ignore;
  if (mapping.contains("ignore")) ignore = mapping["ignore"].get<std::set<std::string>>();
  State params = state(model, Param), loaded;
  for (const auto& [name, tensor] : named.tensors) {
    if (ignore.count(name)) continue;
    NNX_CHECK(mapping.contains(name), "'", file, "' tensor '", name, "' is not in the mapping '", mapping_path,
              "' (map it, or list it under \"ignore\")");
    const auto& m = mapping[name];
    const std::string path = m.is_string() ? m.get<std::string>() : m.at("path").get<std::string>();
    const bool transpose = m.is_object() && m.value("transpose", false);
    NNX_CHECK(params.contains(path), "mapping '", mapping_path, "': '", name, "' -> '", path, "', which is not a Param of the model");
    at::Tensor t = transpose ? tensor.t().contiguous() : tensor;
    const at::Tensor& want = params.at(path).value;
    NNX_CHECK(t.sizes() == want.sizes(), "'", name, "' -> '", path, "': ", named.format, " shape ", format_shape(t.sizes()),
              ", model ", format_shape(want.sizes()), transpose ? "" : " (a Linear weight needs \"transpose\": true)");
    NNX_CHECK(t.scalar_type() == want.scalar_type(), "'", name, "' -> '", path, "': dtype ", t.scalar_type(), ", model ",
              want.scalar_type());
    NNX_CHECK(!loaded.contains(path), "mapping '", mapping_path, "': two tensors map to '", path, "'");
    loaded.insert(path, {Param, t, params.at(path).metadata});
  }
  for (const auto& [path, vs] : params)
    NNX_CHECK(loaded.contains(path), "'", file, "' has no tensor for the model's param '", path, "' (mapping '", mapping_path, "')");
  update(model, loaded);
}

bool is_full_state(const NamedTensors& named) {
  return std::any_of(named.tensors.begin(), named.tensors.end(), [](const auto& t) { return t.first.rfind("model/", 0) == 0; });
}

namespace {

// Into `into` at `path`: the tensor `t` from `file` under `name`, checked against `templ`'s shape
// and dtype (an int count becomes the step's int64).
void take(State& into, const State& templ, const std::string& path, at::Tensor t, const std::string& name, const std::string& file) {
  const VariableState& want = templ.at(path);
  if (want.value.dim() == 0 && want.value.scalar_type() == at::kLong && !at::isFloatingType(t.scalar_type()))
    t = t.to(at::kLong);
  NNX_CHECK(t.sizes() == want.value.sizes(), "'", file, "' tensor '", name, "' -> '", path, "': shape ", format_shape(t.sizes()),
            " in the file, ", format_shape(want.value.sizes()), " in the nnx-cpp model");
  NNX_CHECK(t.scalar_type() == want.value.scalar_type(), "'", file, "' tensor '", name, "' -> '", path, "': dtype ",
            t.scalar_type(), " in the file, ", want.value.scalar_type(), " in the nnx-cpp model");
  into.insert(path, {want.kind, t, want.metadata});
}

}  // namespace

int64_t load_full_state(Module& model, optim::Optimizer& optimizer, const NamedTensors& named, const std::string& file) {
  const State model_templ = state(model, Any({Param, BatchStat})), opt_templ = state(optimizer);
  State model_in, opt_in;
  for (const auto& [name, t] : named.tensors) {
    if (name.rfind("model/", 0) == 0) {
      const std::string path = name.substr(6);
      NNX_CHECK(model_templ.contains(path), "'", file, "' tensor '", name, "': the nnx-cpp model has no Param or BatchStat '",
                path, "' (nnx-ckpt show lists its paths; name the source model's modules alike)");
      take(model_in, model_templ, path, t, name, file);
    } else if (name.rfind("opt/", 0) == 0) {
      const std::string path = name == "opt/count" ? "step" : name.substr(4);
      NNX_CHECK(opt_templ.contains(path), "'", file, "' tensor '", name, "': the nnx-cpp optimizer has no state '", path,
                "' (its optimizer.type and amsgrad must be the source's)");
      take(opt_in, opt_templ, path, t, name, file);
    } else {
      NNX_CHECK(false, "'", file, "' tensor '", name, "' is neither model/... nor opt/...");
    }
  }
  for (const auto& [path, vs] : model_templ)
    NNX_CHECK(model_in.contains(path), "'", file, "' has no tensor for the nnx-cpp model's ", vs.kind.name(), " '", path, "'");
  const bool with_optimizer = !opt_in.empty();
  if (with_optimizer)
    for (const auto& [path, vs] : opt_templ)
      NNX_CHECK(opt_in.contains(path), "'", file, "' has no tensor for the nnx-cpp optimizer's state '", path, "'");
  update(model, model_in);
  if (!with_optimizer) return 0;
  update(optimizer, opt_in);
  return opt_in.at("step").value.item<int64_t>();
}

}  // namespace nnx::trainer
