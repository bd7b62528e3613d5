// Save/restore arguments (Orbax's args): StandardSave/Restore, JsonSave/Restore, Composite.
#pragma once

#include <nlohmann/json.hpp>

#include <map>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "checkpoint/hdf5_io.h"
#include "framework/state.h"

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

/// One item's arguments.
using ItemArgs = std::variant<StandardSave, StandardRestore, JsonSave, JsonRestore>;

/// Named items saved or restored together (ocp.args.Composite). Item names: non-empty, no '/',
/// not "json". A restore may name a subset of the saved items.
class Composite {
 public:
  Composite() = default;
  Composite(std::initializer_list<std::pair<std::string, ItemArgs>> items);
  /// Adds an item; throws nnx::Error for a bad or repeated name.
  Composite& add(const std::string& name, ItemArgs args);
  const std::vector<std::pair<std::string, ItemArgs>>& items() const { return items_; }
  /// Total bytes of the StandardSave items.
  int64_t nbytes() const;

 private:
  std::vector<std::pair<std::string, ItemArgs>> items_;
};

/// What a restore returns: one State per StandardRestore item, one JSON value per JsonRestore.
struct Restored {
  std::map<std::string, State> states;
  std::map<std::string, nlohmann::json> json;
  /// The State of `item`; throws nnx::Error naming it when it was not restored.
  const State& state(const std::string& item) const;
  /// The JSON of `item`; throws nnx::Error naming it when it was not restored.
  const nlohmann::json& json_item(const std::string& item) const;
};

}  // namespace nnx::checkpoint
