// Item handlers registered by their args types (Orbax's handler registry).
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <typeindex>

#include "nnx/checkpoint/handlers/item_handler.h"

namespace nnx::checkpoint {

/// Which handler saves and restores each args type. The built-in kinds (StandardSave /
/// StandardRestore: "state"; JsonSave / JsonRestore: "json") are registered on first use.
/// Thread-safe.
class HandlerRegistry {
 public:
  /// The process's registry, which Checkpointer uses.
  static HandlerRegistry& global();
  /// Registers `handler` for save args of type `save` and restore args of type `restore`.
  /// Throws nnx::Error when either type or the handler's kind is registered already, or the
  /// kind is not [A-Za-z0-9_.-]{1,64}.
  void add(std::type_index save, std::type_index restore, std::shared_ptr<const ItemHandler> handler);
  /// The handler of save args `args`; throws nnx::Error naming `item` and the type when none
  /// is registered for saving it.
  const ItemHandler& for_save(const std::string& item, const ItemArgs& args) const;
  /// The handler of save args `args`, or null (restore args, or an unregistered type).
  const ItemHandler* find_save(const ItemArgs& args) const;
  /// The handler of restore args `args`; throws likewise.
  const ItemHandler& for_restore(const std::string& item, const ItemArgs& args) const;
  /// The handler of a stored kind; throws nnx::Error naming `item` and the kind when none.
  const ItemHandler& for_kind(const std::string& item, const std::string& kind) const;

 private:
  using Table = std::map<std::type_index, std::shared_ptr<const ItemHandler>>;
  HandlerRegistry();
  const ItemHandler* find(const Table& table, std::type_index type) const;
  mutable std::mutex mu_;
  Table save_, restore_;
  std::map<std::string, std::shared_ptr<const ItemHandler>> kinds_;
};

/// Registers `handler` in the global registry for args types SaveArgs and RestoreArgs (see
/// HandlerRegistry::add).
template <typename SaveArgs, typename RestoreArgs>
void register_item_handler(std::shared_ptr<const ItemHandler> handler) {
  HandlerRegistry::global().add(typeid(SaveArgs), typeid(RestoreArgs), std::move(handler));
}

}  // namespace nnx::checkpoint
