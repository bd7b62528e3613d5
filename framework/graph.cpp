#include "nnx/framework/graph.h"

#include "nnx/framework/log.h"


#include <ATen/ATen.h>

#include <mutex>
#include <unordered_map>
#include <unordered_set>

namespace nnx {

namespace {

nlohmann::json node_json(const Module& m, const std::string& prefix,
                         std::unordered_map<const void*, std::string>& vars,
                         std::unordered_map<const Module*, std::string>& mods) {
  nlohmann::json j;
  j["type"] = m.type_name();
  j["config"] = m.config();
  j["slots"] = nlohmann::json::array();
  for (const auto& s : m.slots()) {
    std::string path = prefix.empty() ? s.name : prefix + "/" + s.name;
    nlohmann::json slot;
    slot["name"] = s.name;
    if (s.child) {
      auto it = mods.find(s.child.get());
      if (it != mods.end()) {
        slot["module_ref"] = it->second;
      } else {
        mods.emplace(s.child.get(), path);
        slot["module"] = node_json(*s.child, path, vars, mods);
      }
    } else {
      auto it = vars.find(s.variable.id());
      if (it != vars.end()) {
        slot["variable_ref"] = it->second;
      } else {
        vars.emplace(s.variable.id(), path);
        const at::Tensor& v = s.variable.value();
        nlohmann::json vj;
        vj["kind"] = s.variable.kind().name();
        vj["shape"] = v.defined() ? nlohmann::json(v.sizes().vec()) : nlohmann::json();
        vj["dtype"] = v.defined() ? std::string(c10::toString(v.scalar_type())) : "undefined";
        slot["variable"] = vj;
      }
    }
    j["slots"].push_back(slot);
  }
  return j;
}

at::ScalarType dtype_from_name(const std::string& name) {
  static const std::unordered_map<std::string, at::ScalarType> table = {
      {"Float", at::kFloat},   {"Double", at::kDouble}, {"Half", at::kHalf},
      {"BFloat16", at::kBFloat16}, {"Long", at::kLong}, {"Int", at::kInt},
      {"Short", at::kShort},   {"Char", at::kChar},     {"Byte", at::kByte},
      {"Bool", at::kBool}};
  auto it = table.find(name);
  NNX_CHECK(it != table.end(), "unknown dtype '", name, "' in graphdef");
  return it->second;
}

bool is_container(const std::string& type) {
  return type == "Sequential" || type == "ModuleList" || type == "ModuleDict";
}

// Builds a module tree from JSON: containers from their slots, other types through the registry
// (their constructors make their own subtrees, which must then agree with the JSON).
std::shared_ptr<Module> build_from_json(const nlohmann::json& j, const std::string& path,
                                        std::unordered_map<std::string, Variable>& vars,
                                        std::unordered_map<std::string, std::shared_ptr<Module>>& mods,
                                        Rngs& rngs) {
  const std::string type = j.at("type").get<std::string>();
  std::shared_ptr<Module> m;
  if (is_container(type)) {
    if (type == "Sequential") m = std::make_shared<Sequential>();
    else if (type == "ModuleList") m = std::make_shared<ModuleList>();
    else m = std::make_shared<ModuleDict>();
    for (const auto& slot : j.at("slots")) {
      const std::string name = slot.at("name").get<std::string>();
      std::string sp = path.empty() ? name : path + "/" + name;
      if (slot.contains("module")) {
        auto child = build_from_json(slot["module"], sp, vars, mods, rngs);
        mods[sp] = child;
        m->register_module(name, child);
      } else if (slot.contains("module_ref")) {
        auto ref = slot["module_ref"].get<std::string>();
        NNX_CHECK(mods.count(ref), "graphdef: module_ref '", ref, "' at '", sp, "' is unknown");
        m->register_module(name, mods[ref]);
      } else if (slot.contains("variable")) {
        const auto& vj = slot["variable"];
        auto shape = vj.at("shape").get<std::vector<int64_t>>();
        Variable v(Kind::from_name(vj.at("kind").get<std::string>()),
                   at::empty(shape, at::TensorOptions()
                                        .dtype(dtype_from_name(vj.at("dtype").get<std::string>()))
                                        .device(at::kMeta)));
        vars[sp] = v;
        m->register_variable(name, v);
      } else {
        auto ref = slot.at("variable_ref").get<std::string>();
        NNX_CHECK(vars.count(ref), "graphdef: variable_ref '", ref, "' at '", sp, "' is unknown");
        m->register_variable(name, vars[ref]);
      }
    }
    return m;
  }
  m = ModuleRegistry::create(type, j.at("config"), rngs);
  // The registered constructor built the subtree; check it agrees with the JSON.
  std::function<void(const Module&, const nlohmann::json&, const std::string&)> check =
      [&](const Module& mod, const nlohmann::json& node, const std::string& p) {
        const auto& slots = node.at("slots");
        NNX_CHECK(slots.size() == mod.slots().size(), "graphdef: module '", p, "' (", type,
                  ") has ", mod.slots().size(), " slots when built from its config, graphdef has ",
                  slots.size());
        for (size_t i = 0; i < slots.size(); ++i) {
          const auto& s = mod.slots()[i];
          NNX_CHECK(slots[i].at("name").get<std::string>() == s.name, "graphdef: slot ", i,
                    " of '", p, "' is '", slots[i]["name"].get<std::string>(),
                    "', module built from config has '", s.name, "'");
          if (s.child && slots[i].contains("module"))
            check(*s.child, slots[i]["module"], p.empty() ? s.name : p + "/" + s.name);
        }
      };
  check(*m, j, path);
  return m;
}

}  // namespace

GraphDef graphdef(const Module& module) {
  GraphDef gd;
  std::unordered_map<const void*, std::string> vars;
  std::unordered_map<const Module*, std::string> mods;
  gd.json_ = node_json(module, "", vars, mods);
  gd.prototype_ = detail::clone_with(module, [](const at::Tensor& v) {
    return at::empty(v.sizes(), v.options().device(at::kMeta).requires_grad(false));
  });
  return gd;
}

GraphDef GraphDef::from_json(const nlohmann::json& json) {
  NNX_CHECK(json.is_object() && json.contains("type") && json.contains("slots"),
            "graphdef JSON must be an object with 'type' and 'slots'");
  GraphDef gd;
  gd.json_ = json;
  return gd;
}

State state(const Module& module, const Filter& filter) {
  State out;
  for (const auto& [path, var] : module.named_variables()) {
    if (filter(path, var.kind())) out.insert(path, VariableState{var.kind(), var.value(), var.metadata()});
  }
  return out;
}

std::pair<GraphDef, std::vector<State>> split_states(const Module& module,
                                                     const std::vector<Filter>& filters) {
  return {graphdef(module), state(module).split(filters)};
}

namespace {
// The value merge() binds at `path`: checked against the graphdef's prototype `proto` as
// update() checks (a state made for another model), detached as update() does (a leaf of its
// own sharing the state's storage, so the state's tensor is untouched), and trainable when a
// floating-point Param, as the Param kind makes it.
at::Tensor merged_value(const at::Tensor& proto, const VariableState& vs, const std::string& path) {
  at::Tensor v = vs.value;
  if (proto.defined() && v.defined()) {
    NNX_CHECK(proto.sizes() == v.sizes(), "merge: shape mismatch at '", path, "': graphdef ",
              format_shape(proto.sizes()), ", state ", format_shape(v.sizes()));
    NNX_CHECK(proto.scalar_type() == v.scalar_type(), "merge: dtype mismatch at '", path, "': graphdef ",
              proto.scalar_type(), ", state ", v.scalar_type());
  }
  if (v.defined() && !v.is_meta()) {
    v = v.detach();
    if (vs.kind.is_a(Param) && v.is_floating_point()) v.requires_grad_(true);
  }
  return v;
}
}  // namespace

std::shared_ptr<Module> merge(const GraphDef& graphdef, const std::vector<State>& states) {
  std::shared_ptr<Module> root;
  if (graphdef.prototype_) {
    root = detail::clone_with(*graphdef.prototype_, [](const at::Tensor& v) { return v; });
  } else {
    AbstractScope scope;
    // Registered constructors draw from an Rngs; give them the streams the graphdef declares
    // (its first Rngs node), so models that hold their Rngs rebuild with the same structure.
    std::map<std::string, uint64_t> streams;
    std::function<void(const nlohmann::json&)> find_rngs = [&](const nlohmann::json& node) {
      if (!streams.empty()) return;
      if (node.value("type", "") == "Rngs" && node.contains("config") && node["config"].contains("streams")) {
        for (const auto& n : node["config"]["streams"]) streams[n.get<std::string>()] = 0;
        return;
      }
      if (node.contains("slots"))
        for (const auto& slot : node["slots"])
          if (slot.contains("module")) find_rngs(slot["module"]);
    };
    find_rngs(graphdef.json_);
    if (streams.empty()) streams["default"] = 0;
    Rngs rngs(streams);
    std::unordered_map<std::string, Variable> vars;
    std::unordered_map<std::string, std::shared_ptr<Module>> mods;
    root = build_from_json(graphdef.json_, "", vars, mods, rngs);
  }
  State all;
  for (const auto& s : states)
    for (const auto& [path, vs] : s) {
      NNX_CHECK(!all.contains(path), "merge: path '", path, "' is in more than one state");
      all.insert(path, vs);
    }
  std::unordered_set<std::string> used;
  for (auto& [path, var] : root->named_variables()) {
    NNX_CHECK(all.contains(path), "merge: no state holds variable '", path, "' (",
              var.kind().name(), ", ", format_shape(var.value().sizes()), ")");
    const VariableState& vs = all.at(path);
    var.set_value(merged_value(var.value(), vs, path));
    var.set_kind(vs.kind);
    var.metadata() = vs.metadata;
    used.insert(path);
  }
  for (const auto& [path, vs] : all)
    NNX_CHECK(used.count(path), "merge: state path '", path, "' is not a variable of the graphdef");
  const auto modules = root->named_modules();  // the root first: it rebinds last, as before
  for (size_t i = 1; i < modules.size(); ++i) modules[i].second->on_rebind();
  root->on_rebind();
  return root;
}

void update(Module& module, const State& state) {
  std::unordered_map<std::string, Variable> by_path;
  for (auto& [path, var] : module.named_variables(/*with_duplicates=*/true)) by_path.emplace(path, var);
  for (const auto& [path, vs] : state) {
    auto it = by_path.find(path);
    NNX_CHECK(it != by_path.end(), "update: the module has no variable '", path, "'");
    Variable& var = it->second;
    const at::Tensor& old = var.value();
    at::Tensor nv = vs.value;
    if (old.defined() && !old.is_meta() && nv.defined()) {
      NNX_CHECK(old.sizes() == nv.sizes(), "update: shape mismatch at '", path, "': module ",
                format_shape(old.sizes()), ", state ", format_shape(nv.sizes()));
      NNX_CHECK(old.scalar_type() == nv.scalar_type(), "update: dtype mismatch at '", path,
                "': module ", old.scalar_type(), ", state ", nv.scalar_type());
      if (nv.device() != old.device() && !var.kind().is_a(RngState)) nv = nv.to(old.device());
      nv = nv.detach();
      if (old.requires_grad()) nv.requires_grad_(true);
    }
    var.set_value(nv);
    var.set_kind(vs.kind);
    var.metadata() = vs.metadata;
  }
}

State pop(Module& module, const Filter& filter) {
  State out = state(module, filter);
  std::unordered_set<const void*> ids;
  for (auto& [path, var] : module.named_variables())
    if (filter(path, var.kind())) ids.insert(var.id());
  for (auto& [p, m] : module.named_modules()) {
    std::vector<std::string> names;
    for (const auto& s : m->slots())
      if (!s.child && ids.count(s.variable.id())) names.push_back(s.name);
    for (const auto& n : names) m->remove_slot(n);  // the root's own variables too
  }
  return out;
}

State grads(const Module& module, const Filter& filter) {
  State out;
  for (const auto& [path, var] : module.named_variables()) {
    if (!filter(path, var.kind())) continue;
    const at::Tensor& v = var.value();
    NNX_CHECK(v.requires_grad(), "grads: variable '", path, "' (", var.kind().name(),
              ") does not require grad");
    at::Tensor g = v.grad();
    out.insert(path, VariableState{var.kind(), g.defined() ? g : at::zeros_like(v), {}});
  }
  return out;
}

void zero_grad(Module& module, bool set_to_none) {
  for (auto& [path, var] : module.named_variables()) {
    at::Tensor v = var.value();
    if (!v.defined() || !v.grad().defined()) continue;
    if (set_to_none) {
      v.mutable_grad().reset();
    } else {
      v.mutable_grad().detach_();
      v.mutable_grad().zero_();  // keeps the buffer: no fresh allocation (and page faults) next step
    }
  }
}


namespace detail {
void warn_allocated(const Module& module) {
  for (const auto& [path, var] : module.named_variables())
    if (var.value().defined() && !var.value().is_meta())
      log::warn_parts("eval_shape: '", path, "' holds real memory (", format_bytes(var.value().numel() * var.value().element_size()),
                      "): it was made with a plain ATen factory; use nnx::init:: (zeros, ones, normal, ...) so that it is abstract");
}
}  // namespace detail

}  // namespace nnx
