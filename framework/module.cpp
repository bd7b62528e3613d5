#include "nnx/framework/module.h"

#include <ATen/ATen.h>
#include <cxxabi.h>

#include <nlohmann/json.hpp>
#include <unordered_map>
#include <unordered_set>

#include "nnx/framework/state.h"

namespace nnx {

std::string Module::type_name() const {
  int status = 0;
  const char* mangled = typeid(*this).name();
  char* demangled = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
  std::string name = status == 0 && demangled ? demangled : mangled;
  std::free(demangled);
  return name;
}

nlohmann::json Module::config() const { return nlohmann::json::object(); }

at::Tensor Module::forward(const at::Tensor&) {
  NNX_CHECK(false, describe(), " has no unary forward(x)");
  return {};
}

std::string Module::describe() const {
  return detail::str("layer '", path_.empty() ? std::string("<root>") : path_, "' (", type_name(),
                     ")");
}

void Module::check_name(const std::string& name) const {
  NNX_CHECK(!name.empty(), "empty name registered in ", describe());
  NNX_CHECK(name.find('/') == std::string::npos && name.find('.') == std::string::npos,
            "invalid name '", name, "' in ", describe(), ": names may not contain '/' or '.'");
  NNX_CHECK(find(name) == nullptr, "name '", name, "' is already registered in ", describe());
}

std::string Module::join(const std::string& name) const {
  return path_.empty() ? name : path_ + "/" + name;
}

Variable Module::register_variable(const std::string& name, Variable variable) {
  check_name(name);
  NNX_CHECK(variable.defined(), "registering a null Variable as '", join(name), "'");
  slots_.push_back(Slot{name, variable, nullptr});
  return variable;
}

void Module::register_child(const std::string& name, std::shared_ptr<Module> module) {
  check_name(name);
  NNX_CHECK(module != nullptr, "registering a null module as '", join(name), "'");
  NNX_CHECK(module.get() != this, "a module cannot be its own child ('", join(name), "')");
  // A cycle (the new child already holds this module somewhere below it) would make every walk
  // of the tree (split, graphdef, clone, set_path) recurse forever: reject it here, by name.
  if (auto inside = module->path_to(this))
    NNX_CHECK(false, "cannot register module '", join(name), "': it already contains this module (at '",
              join(name), "/", *inside, "'), which would make a cycle; modules form a tree (shared ",
              "children are fine, cycles are not)");
  module->set_path(join(name));
  slots_.push_back(Slot{name, Variable(), std::move(module)});
}

std::optional<std::string> Module::path_to(const Module* target) const {
  std::unordered_set<const Module*> seen;
  std::function<std::optional<std::string>(const Module&, const std::string&)> rec =
      [&](const Module& m, const std::string& prefix) -> std::optional<std::string> {
    for (const auto& s : m.slots_) {
      if (!s.child || !seen.insert(s.child.get()).second) continue;
      const std::string path = prefix.empty() ? s.name : prefix + "/" + s.name;
      if (s.child.get() == target) return path;
      if (auto found = rec(*s.child, path)) return found;
    }
    return std::nullopt;
  };
  return rec(*this, "");
}

void Module::set_path(const std::string& path) {
  path_ = path;
  for (auto& s : slots_)
    if (s.child) s.child->set_path(join(s.name));
}

Module::Slot* Module::find(const std::string& name) {
  for (auto& s : slots_)
    if (s.name == name) return &s;
  return nullptr;
}
const Module::Slot* Module::find(const std::string& name) const {
  for (const auto& s : slots_)
    if (s.name == name) return &s;
  return nullptr;
}

Variable& Module::variable(const std::string& name) {
  Slot* s = find(name);
  NNX_CHECK(s && s->variable.defined(), "no variable '", join(name), "' in ", describe());
  return s->variable;
}
const Variable& Module::variable(const std::string& name) const {
  const Slot* s = find(name);
  NNX_CHECK(s && s->variable.defined(), "no variable '", join(name), "' in ", describe());
  return s->variable;
}
const std::shared_ptr<Module>& Module::child_ptr(const std::string& name) const {
  const Slot* s = find(name);
  NNX_CHECK(s && s->child, "no child module '", join(name), "' in ", describe());
  return s->child;
}
bool Module::has_variable(const std::string& name) const {
  const Slot* s = find(name);
  return s && s->variable.defined();
}
bool Module::has_child(const std::string& name) const {
  const Slot* s = find(name);
  return s && s->child;
}

void Module::rebind_variable(const std::string& name, Variable variable) {
  Slot* s = find(name);
  NNX_INTERNAL_ASSERT(s && !s->child, "rebind of unknown variable slot ", join(name));
  s->variable = std::move(variable);
}
void Module::rebind_child(const std::string& name, std::shared_ptr<Module> child) {
  Slot* s = find(name);
  NNX_INTERNAL_ASSERT(s && s->child, "rebind of unknown child slot ", join(name));
  s->child = std::move(child);
}
void Module::remove_slot(const std::string& name) {
  for (auto it = slots_.begin(); it != slots_.end(); ++it) {
    if (it->name == name) {
      slots_.erase(it);
      return;
    }
  }
  NNX_CHECK(false, "no slot '", join(name), "' to remove");
}

namespace {
void walk_variables(const Module& m, const std::string& prefix, bool dups,
                    std::unordered_set<const void*>& seen_vars,
                    std::unordered_set<const Module*>& seen_mods,
                    std::vector<std::pair<std::string, Variable>>& out) {
  for (const auto& s : m.slots()) {
    std::string path = prefix.empty() ? s.name : prefix + "/" + s.name;
    if (s.child) {
      if (!dups && !seen_mods.insert(s.child.get()).second) continue;
      walk_variables(*s.child, path, dups, seen_vars, seen_mods, out);
    } else {
      if (!dups && !seen_vars.insert(s.variable.id()).second) continue;
      out.emplace_back(path, s.variable);
    }
  }
}
}  // namespace

std::vector<std::pair<std::string, Variable>> Module::named_variables(bool with_duplicates) const {
  std::vector<std::pair<std::string, Variable>> out;
  std::unordered_set<const void*> seen_vars;
  std::unordered_set<const Module*> seen_mods;
  walk_variables(*this, "", with_duplicates, seen_vars, seen_mods, out);
  return out;
}

std::vector<std::pair<std::string, std::shared_ptr<Module>>> Module::named_modules() const {
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> out;
  std::unordered_set<const Module*> seen;
  std::function<void(const Module&, const std::string&)> rec = [&](const Module& m,
                                                                   const std::string& prefix) {
    for (const auto& s : m.slots()) {
      if (!s.child || !seen.insert(s.child.get()).second) continue;
      std::string path = prefix.empty() ? s.name : prefix + "/" + s.name;
      out.emplace_back(path, s.child);
      rec(*s.child, path);
    }
  };
  // Non-owning (the aliasing constructor over an empty owner): the caller holds the root.
  out.emplace_back("", std::shared_ptr<Module>(std::shared_ptr<Module>(), const_cast<Module*>(this)));
  rec(*this, "");
  return out;
}

void Module::train(bool on) {
  training_ = on;
  for (auto& s : slots_)
    if (s.child) s.child->train(on);
}

void Module::to(const c10::Device& device) {
  for (auto& [path, var] : named_variables()) {
    const at::Tensor& v = var.value();
    // Rng keys and counters are host-side counters: reading them must not sync a device.
    if (!v.defined() || v.device() == device || var.kind().is_a(RngState)) continue;
    bool rg = v.requires_grad();
    var.set_value(v.detach().to(device).requires_grad_(rg));
  }
}

void Module::to(at::ScalarType dtype) {
  for (auto& [path, var] : named_variables()) {
    const at::Tensor& v = var.value();
    if (!v.defined() || !v.is_floating_point() || v.scalar_type() == dtype) continue;
    bool rg = v.requires_grad();
    var.set_value(v.detach().to(dtype).requires_grad_(rg));
  }
}

namespace {
std::shared_ptr<Module> clone_rec(const Module& m,
                                  std::unordered_map<const Module*, std::shared_ptr<Module>>& mods,
                                  std::unordered_map<const void*, Variable>& vars,
                                  const std::function<at::Tensor(const at::Tensor&)>& map) {
  auto copy = m.clone_node();
  for (const auto& s : m.slots()) {
    if (s.child) {
      auto it = mods.find(s.child.get());
      if (it == mods.end()) {
        it = mods.emplace(s.child.get(), clone_rec(*s.child, mods, vars, map)).first;
      }
      copy->rebind_child(s.name, it->second);
    } else {
      auto it = vars.find(s.variable.id());
      if (it == vars.end()) {
        const at::Tensor& v = s.variable.value();
        at::Tensor nv;
        if (v.defined()) nv = map(v);
        it = vars.emplace(s.variable.id(),
                          Variable(s.variable.kind(), nv, s.variable.metadata()))
                 .first;
      }
      copy->rebind_variable(s.name, it->second);
    }
  }
  copy->on_rebind();
  return copy;
}
}  // namespace

std::shared_ptr<Module> detail::clone_with(const Module& module,
                                           const std::function<at::Tensor(const at::Tensor&)>& map) {
  std::unordered_map<const Module*, std::shared_ptr<Module>> mods;
  std::unordered_map<const void*, Variable> vars;
  return clone_rec(module, mods, vars, map);
}

std::shared_ptr<Module> clone(const Module& module) {
  return detail::clone_with(module, [](const at::Tensor& v) {
    return v.detach().clone().requires_grad_(v.requires_grad());
  });
}

Sequential& Sequential::push_back(std::shared_ptr<Module> module) {
  register_module(std::to_string(slots().size()), std::move(module));
  return *this;
}

at::Tensor Sequential::forward(const at::Tensor& x) {
  at::Tensor y = x;
  for (const auto& s : slots()) {
    NNX_CHECK(s.child, describe(), " holds a variable '", s.name, "'; Sequential runs modules only");
    y = s.child->forward(y);
  }
  return y;
}

ModuleList& ModuleList::push_back(std::shared_ptr<Module> module) {
  register_module(std::to_string(slots().size()), std::move(module));
  return *this;
}

Module& ModuleList::operator[](size_t i) const {
  NNX_CHECK(i < slots().size(), "index ", i, " out of range for ", describe(), " of size ",
            slots().size());
  return *slots()[i].child;
}

void insert_variable(Module& root, const std::string& path, Variable variable) {
  auto parts = split_path(path);
  Module* node = &root;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    if (!node->has_child(parts[i])) {
      NNX_CHECK(!node->has_variable(parts[i]), "cannot insert '", path, "': '", parts[i],
                "' is a variable");
      node->register_module(parts[i], std::make_shared<ModuleDict>());
    }
    node = node->child_ptr(parts[i]).get();
  }
  node->register_variable(parts.back(), std::move(variable));
}

}  // namespace nnx
