// Save/restore arguments (Orbax's args): StandardSave/Restore, JsonSave/Restore, Composite.
#pragma once

#include <nlohmann/json.hpp>

#include <any>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <typeindex>
#include <utility>
#include <vector>

#include "nnx/checkpoint/format/read_options.h"
#include "nnx/framework/state.h"

namespace nnx::checkpoint {

/// Save one State as an item (ocp.args.StandardSave).
struct StandardSave {
  State state;
  explicit StandardSave(State s) : state(std::move(s)) {}
};

/// Restore one State against a template (ocp.args.StandardRestore): the template is usually
/// nnx::state() of an eval_shape'd model. `options` selects partial restore (filter), casting,
/// the target device and extra-path tolerance.
struct StandardRestore {
  State templ;
  ReadOptions options;
  explicit StandardRestore(State t, ReadOptions o = {}) : templ(std::move(t)), options(std::move(o)) {}
};

/// Save a JSON value as an item (ocp.args.JsonSave).
struct JsonSave {
  nlohmann::json value;
  explicit JsonSave(nlohmann::json v) : value(std::move(v)) {}
  /// JsonSave({{"epoch", 3}, {"index", 17}}): an object literal (without this overload the
  /// braces were ambiguous with the copy constructor and did not compile).
  JsonSave(nlohmann::json::initializer_list_t init) : value(init) {}
};

/// Restore a JSON item (ocp.args.JsonRestore).
struct JsonRestore {};

/// The item a single-State save and restore use (Orbax's name for a manager's only item).
inline constexpr const char* kDefaultItem = "default";

/// One item's arguments: a value of any args type with a registered handler
/// (handlers/registry.h): StandardSave, StandardRestore, JsonSave, JsonRestore, or a user's.
/// Copies share the (immutable) value.
class ItemArgs {
 public:
  template <typename T, typename = std::enable_if_t<!std::is_same_v<std::decay_t<T>, ItemArgs>>>
  ItemArgs(T&& args)  // NOLINT: implicit, as the variant it replaces
      : value_(std::make_shared<const std::decay_t<T>>(std::forward<T>(args))), type_(typeid(std::decay_t<T>)) {}
  /// The args type (what handlers are registered by).
  std::type_index type() const { return type_; }
  /// The value when it is a T, else null.
  template <typename T>
  const T* get_if() const {
    return type_ == std::type_index(typeid(T)) ? static_cast<const T*>(value_.get()) : nullptr;
  }
  template <typename T>
  bool holds() const {
    return get_if<T>() != nullptr;
  }

 private:
  std::shared_ptr<const void> value_;
  std::type_index type_;
};

/// Named items saved or restored together (ocp.args.Composite). Item names: non-empty, no '/',
/// not "json". A restore may name a subset of the saved items.
class Composite {
 public:
  Composite() = default;
  Composite(std::initializer_list<std::pair<std::string, ItemArgs>> items);
  /// Adds an item; throws nnx::Error for a bad or repeated name.
  Composite& add(const std::string& name, ItemArgs args);
  const std::vector<std::pair<std::string, ItemArgs>>& items() const { return items_; }
  /// Total bytes of the items' tensors (ItemHandler::nbytes).
  int64_t nbytes() const;

 private:
  std::vector<std::pair<std::string, ItemArgs>> items_;
};

/// What a restore returns: one State per StandardRestore item, one JSON value per JsonRestore,
/// and the value of each item of a user's kind (its handler's choice).
struct Restored {
  std::map<std::string, State> states;
  std::map<std::string, nlohmann::json> json;
  std::map<std::string, std::any> others;
  /// The State of `item`; throws nnx::Error naming it when it was not restored.
  const State& state(const std::string& item) const;
  /// The JSON of `item`; throws nnx::Error naming it when it was not restored.
  const nlohmann::json& json_item(const std::string& item) const;
  /// The value of a user kind's `item`; throws nnx::Error naming it when it was not restored
  /// or is not a T.
  template <typename T>
  const T& get(const std::string& item) const {
    const T* v = others.count(item) ? std::any_cast<T>(&others.at(item)) : nullptr;
    if (!v) missing(item);
    return *v;
  }

 private:
  [[noreturn]] static void missing(const std::string& item);
};

}  // namespace nnx::checkpoint
