// nnx::Module: eager, stateful modules that own named Variables and child Modules (nnx.Module).
#pragma once

#include <ATen/core/Tensor.h>
#include <nlohmann/json_fwd.hpp>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "nnx/framework/error.h"
#include "nnx/framework/variable.h"

namespace nnx {

/// Base of every module. A module registers Variables and child modules by name (non-empty, no
/// '.' or '/', unique within the module); iteration follows registration order, and paths join
/// names with '/'. Subclass through ModuleBase<Derived> so clone() and merge() can copy it.
///
/// Rule for subclasses: reach variables and children through variable(name) / child<T>(name)
/// (or refresh cached handles in on_rebind()), because clone() and merge() rebind the slots.
class Module {
 public:
  virtual ~Module() = default;

  /// The registry name of this module type ("Linear"); by default the C++ type name.
  virtual std::string type_name() const;
  /// The constructor config the registry needs to rebuild this module (an empty object when the
  /// type is not registered).
  virtual nlohmann::json config() const;
  /// Unary forward pass; modules with other signatures define their own call operators.
  /// Throws nnx::Error for modules that are not unary.
  virtual at::Tensor forward(const at::Tensor& x);
  at::Tensor operator()(const at::Tensor& x) { return forward(x); }

  /// Registers `variable` under `name` and returns it. Throws nnx::Error on a bad or taken name.
  Variable register_variable(const std::string& name, Variable variable);
  /// Registers `module` as a child under `name`. Throws nnx::Error on a bad or taken name.
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> module) {
    register_child(name, module);
    return module;
  }

  /// The variable registered here under `name`; throws nnx::Error naming the full path if absent.
  Variable& variable(const std::string& name);
  const Variable& variable(const std::string& name) const;
  /// The child registered under `name` as M; throws nnx::Error naming the path if absent or not
  /// an M.
  template <class M = Module>
  M& child(const std::string& name) const {
    auto* m = dynamic_cast<M*>(child_ptr(name).get());
    NNX_CHECK(m != nullptr, "module '", join(name), "' is a ", child_ptr(name)->type_name(),
              ", not the requested type");
    return *m;
  }
  /// The child registered under `name`; throws nnx::Error naming the path if absent.
  const std::shared_ptr<Module>& child_ptr(const std::string& name) const;
  bool has_variable(const std::string& name) const;
  bool has_child(const std::string& name) const;

  /// One registered slot: a variable or a child module.
  struct Slot {
    std::string name;
    Variable variable;              ///< defined for a variable slot
    std::shared_ptr<Module> child;  ///< set for a child slot
  };
  /// This module's own slots in registration order.
  const std::vector<Slot>& slots() const { return slots_; }

  /// Every variable of the tree as (path, Variable), depth-first in registration order. A shared
  /// variable (weight tying) appears once, under its first path, unless `with_duplicates`.
  std::vector<std::pair<std::string, Variable>> named_variables(bool with_duplicates = false) const;
  /// This module and every module below it as (path, module): the root first at path "" (as
  /// PyTorch's named_modules() and Flax's iter_modules yield it), then depth-first in registration
  /// order; a shared child appears once, under its first path. The root's pointer does not own it
  /// (a root need not be held by a shared_ptr): it is valid while the caller's root lives.
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> named_modules() const;

  /// Sets training mode on the whole tree (Dropout active, BatchNorm uses batch statistics).
  void train(bool on = true);
  /// Sets evaluation mode on the whole tree.
  void eval() { train(false); }
  bool is_training() const { return training_; }

  /// Moves every variable to `device`; variables shared between modules stay shared. Rng
  /// state (RngKey/RngCount) stays on the host.
  void to(const c10::Device& device);
  /// Casts every floating-point variable to `dtype` (integer state such as Rng keys is kept).
  void to(at::ScalarType dtype);

  /// This module's path from the root it was last registered under ("" for a root); used in
  /// error messages ("layer 'blocks/0/fc' (Linear): ...").
  const std::string& path() const { return path_; }
  /// A short description for errors: "layer 'path' (Type)".
  std::string describe() const;

  /// Shallow copy of this node (same slots, same config); used by clone() and merge().
  virtual std::shared_ptr<Module> clone_node() const = 0;
  /// Called after clone()/merge() rebound this module's slots.
  virtual void on_rebind() {}

  /// Replaces the variable of slot `name` (rebinding, not writing through). Internal to
  /// clone/merge/pop, public for tools that restructure trees.
  void rebind_variable(const std::string& name, Variable variable);
  /// Replaces the child of slot `name`.
  void rebind_child(const std::string& name, std::shared_ptr<Module> child);
  /// Removes slot `name`.
  void remove_slot(const std::string& name);

 protected:
  Module() = default;
  Module(const Module&) = default;
  Module& operator=(const Module&) = default;

 private:
  void register_child(const std::string& name, std::shared_ptr<Module> module);
  void check_name(const std::string& name) const;
  std::string join(const std::string& name) const;
  void set_path(const std::string& path);
  // The path of `target` below this module (depth-first), or nullopt.
  std::optional<std::string> path_to(const Module* target) const;
  Slot* find(const std::string& name);
  const Slot* find(const std::string& name) const;

  std::vector<Slot> slots_;
  std::string path_;
  bool training_ = true;
};

/// CRTP base that gives a module type its clone_node(): `struct Net : nnx::ModuleBase<Net> {...}`.
template <class Derived>
class ModuleBase : public Module {
 public:
  std::shared_ptr<Module> clone_node() const override {
    return std::make_shared<Derived>(static_cast<const Derived&>(*this));
  }
};

/// Deep copy: new variables with cloned tensors; variables and modules shared inside `module`
/// are shared inside the copy (weight tying survives).
std::shared_ptr<Module> clone(const Module& module);
namespace detail {
/// clone() with `map` producing each new variable's tensor from the old one.
std::shared_ptr<Module> clone_with(const Module& module,
                                   const std::function<at::Tensor(const at::Tensor&)>& map);
}  // namespace detail
template <class M>
std::shared_ptr<M> clone_as(const M& module) {
  return std::dynamic_pointer_cast<M>(clone(static_cast<const Module&>(module)));
}

/// Runs children in order: y = f_n(...f_1(x)).
class Sequential : public ModuleBase<Sequential> {
 public:
  Sequential() = default;
  /// Appends `module` under the name "<index>".
  Sequential& push_back(std::shared_ptr<Module> module);
  size_t size() const { return slots().size(); }
  std::string type_name() const override { return "Sequential"; }
  at::Tensor forward(const at::Tensor& x) override;
};

/// An indexed list of modules named "0", "1", ... (nnx.List of modules).
class ModuleList : public ModuleBase<ModuleList> {
 public:
  ModuleList() = default;
  ModuleList& push_back(std::shared_ptr<Module> module);
  size_t size() const { return slots().size(); }
  /// The i-th module; throws nnx::Error when out of range.
  Module& operator[](size_t i) const;
  std::string type_name() const override { return "ModuleList"; }
};

/// A string-keyed dict of modules and variables (also the intermediate node of optimizer state).
class ModuleDict : public ModuleBase<ModuleDict> {
 public:
  ModuleDict() = default;
  std::string type_name() const override { return "ModuleDict"; }
};

/// Inserts `variable` at `path` below `root`, creating ModuleDicts for missing intermediate
/// nodes. Throws nnx::Error when a path component names a variable or is invalid.
void insert_variable(Module& root, const std::string& path, Variable variable);

}  // namespace nnx
