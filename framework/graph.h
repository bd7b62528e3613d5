// split / merge / update / state / graphdef / pop / eval_shape / grads (nnx's graph functions).
#pragma once

#include <nlohmann/json.hpp>

#include <array>
#include <functional>
#include <memory>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "nnx/framework/filter.h"
#include "nnx/framework/init.h"
#include "nnx/framework/module.h"
#include "nnx/framework/module_registry.h"
#include "nnx/framework/rngs.h"
#include "nnx/framework/state.h"

namespace nnx {

/// The static structure of a module tree: module types, their configs, variable slots (kind,
/// shape, dtype), and which slots share a variable or a module. to_json() is complete; a GraphDef
/// made in this process also keeps an abstract prototype, so merge() works for any module type.
/// A GraphDef read from JSON can be merged when every module type in it is registered.
class GraphDef {
 public:
  GraphDef() = default;
  /// The structure as JSON:
  /// {"type", "config", "slots": [{"name", "variable": {"kind","shape","dtype"}} |
  ///  {"name", "variable_ref": path} | {"name", "module": {...}} | {"name", "module_ref": path}]}
  const nlohmann::json& to_json() const { return json_; }
  /// A GraphDef from JSON (no prototype); throws nnx::Error on malformed JSON.
  static GraphDef from_json(const nlohmann::json& json);
  /// Whether this GraphDef carries an in-process prototype.
  bool has_prototype() const { return prototype_ != nullptr; }

 private:
  friend GraphDef graphdef(const Module& module);
  friend std::shared_ptr<Module> merge(const GraphDef& graphdef, const std::vector<State>& states);
  nlohmann::json json_;
  std::shared_ptr<const Module> prototype_;
};

/// The module's GraphDef.
GraphDef graphdef(const Module& module);

/// Every variable of `module` whose (path, kind) matches `filter`, keyed by first path. Tensors
/// alias the module's.
State state(const Module& module, const Filter& filter = Everything());

/// The GraphDef and one State per filter; the first matching filter wins; a variable no filter
/// matches is an error naming its path unless the last filter is Everything().
std::pair<GraphDef, std::vector<State>> split_states(const Module& module,
                                                     const std::vector<Filter>& filters);

namespace detail_split {
template <size_t N, size_t... I>
auto to_tuple_impl(std::vector<State>&& v, std::index_sequence<I...>) {
  return std::make_tuple(std::move(v[I])...);
}
template <size_t N>
auto to_tuple(std::vector<State>&& v) {
  return to_tuple_impl<N>(std::move(v), std::make_index_sequence<N>{});
}
}  // namespace detail_split

/// `auto [graphdef, params, rest] = nnx::split(model, nnx::Param, nnx::Everything());`
/// With no filters: `auto [graphdef, state] = nnx::split(model);`
template <class... Filters>
auto split(const Module& module, Filters&&... filters) {
  constexpr size_t n = sizeof...(Filters) == 0 ? 1 : sizeof...(Filters);
  std::vector<Filter> fs;
  if constexpr (sizeof...(Filters) == 0) {
    fs.push_back(Everything());
  } else {
    (fs.push_back(Filter(std::forward<Filters>(filters))), ...);
  }
  auto [gd, states] = split_states(module, fs);
  return std::tuple_cat(std::make_tuple(std::move(gd)),
                        detail_split::to_tuple<n>(std::move(states)));
}

/// A new module from `graphdef` and `states` (their union must hold exactly the graphdef's
/// variables; a missing or extra path is an error naming it). Shared variables are restored as
/// shared. Tensors are adopted, not copied.
std::shared_ptr<Module> merge(const GraphDef& graphdef, const std::vector<State>& states);
template <class M = Module, class... States>
std::shared_ptr<M> merge_as(const GraphDef& graphdef, const States&... states) {
  auto m = std::dynamic_pointer_cast<M>(merge(graphdef, std::vector<State>{states...}));
  NNX_CHECK(m != nullptr, "merged module is not of the requested type");
  return m;
}

/// Writes `state`'s tensors into `module`'s variables (adopting the tensors, moved to the
/// variable's device). Every path must exist in the module and match its shape and dtype,
/// otherwise nnx::Error names the path and both values. Abstract (meta) variables adopt any
/// shape. Kind and metadata are taken from the state.
void update(Module& module, const State& state);
template <class... States>
void update(Module& module, const State& first, const States&... rest) {
  update(module, first);
  (update(module, rest), ...);
}

/// Removes the variables matching `filter` from `module` and returns them (nnx.pop).
State pop(Module& module, const Filter& filter);

namespace detail {
/// Warns (nnx's log) for each variable of `module` that holds real memory after eval_shape.
void warn_allocated(const Module& module);
}  // namespace detail

/// Runs `factory` with every initialiser producing meta tensors: the result has shapes and
/// dtypes and allocates no data (nnx.eval_shape). Use nnx::state() of it as a restore template.
/// A variable made with a plain ATen factory (at::zeros, at::randn) cannot be intercepted and
/// holds real memory: eval_shape warns naming it (create it with nnx::init:: instead).
template <class F>
auto eval_shape(F&& factory) {
  AbstractScope scope;
  auto out = factory();
  if constexpr (std::is_convertible_v<decltype(out), std::shared_ptr<const Module>>) detail::warn_allocated(*out);
  return out;
}

/// The gradients of the variables matching `filter` (default Param), keyed by path, after a
/// backward pass (nnx.grad's result). A parameter without a gradient gets zeros. Throws
/// nnx::Error naming the path when a matching variable does not require grad.
State grads(const Module& module, const Filter& filter = Param);
/// Clears the gradients of every variable: set to undefined (torch's set_to_none, the default),
/// or zeroed in place, which reuses the buffers (torch::optim::Optimizer::zero_grad in 1.13).
void zero_grad(Module& module, bool set_to_none = true);

}  // namespace nnx
