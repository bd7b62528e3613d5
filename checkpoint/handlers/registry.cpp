#include "nnx/checkpoint/handlers/registry.h"

#include <c10/util/Type.h>

#include <cctype>

#include "nnx/checkpoint/handlers/json_handler.h"
#include "nnx/checkpoint/handlers/state_handler.h"
#include "nnx/framework/error.h"

namespace nnx::checkpoint {

namespace {
std::string type_name(std::type_index t) { return c10::demangle(t.name()); }

bool valid_kind(const std::string& k) {
  if (k.empty() || k.size() > 64) return false;
  for (char c : k)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-' && c != '.') return false;
  return true;
}
}  // namespace

HandlerRegistry& HandlerRegistry::global() {
  static HandlerRegistry* r = new HandlerRegistry;  // never destroyed: usable from any static
  return *r;
}

// The built-in kinds, registered here rather than by static objects in their own files, which
// a static library's linker may drop.
HandlerRegistry::HandlerRegistry() {
  add(typeid(StandardSave), typeid(StandardRestore), std::make_shared<StateHandler>());
  add(typeid(JsonSave), typeid(JsonRestore), std::make_shared<JsonHandler>());
}

void HandlerRegistry::add(std::type_index save, std::type_index restore, std::shared_ptr<const ItemHandler> handler) {
  NNX_CHECK(handler != nullptr, "register_item_handler: no handler given");
  const std::string kind = handler->kind();
  NNX_CHECK(valid_kind(kind), "register_item_handler: kind '", kind, "' is not [A-Za-z0-9_.-]{1,64}");
  std::lock_guard<std::mutex> lock(mu_);
  NNX_CHECK(!save_.count(save) && !restore_.count(save), "register_item_handler: ", type_name(save), " already has a handler");
  NNX_CHECK(!save_.count(restore) && !restore_.count(restore), "register_item_handler: ", type_name(restore),
            " already has a handler");
  NNX_CHECK(!kinds_.count(kind), "register_item_handler: the item kind '", kind, "' is registered already");
  save_[save] = handler;
  restore_[restore] = handler;
  kinds_[kind] = std::move(handler);
}

const ItemHandler* HandlerRegistry::find(const Table& table, std::type_index type) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = table.find(type);
  return it == table.end() ? nullptr : it->second.get();
}

const ItemHandler* HandlerRegistry::find_save(const ItemArgs& args) const { return find(save_, args.type()); }

const ItemHandler& HandlerRegistry::for_save(const std::string& item, const ItemArgs& args) const {
  const ItemHandler* h = find(save_, args.type());
  NNX_CHECK(h, "item '", item, "': save needs save arguments (StandardSave, JsonSave, or a registered kind's), not ",
            type_name(args.type()));
  return *h;
}

const ItemHandler& HandlerRegistry::for_restore(const std::string& item, const ItemArgs& args) const {
  const ItemHandler* h = find(restore_, args.type());
  NNX_CHECK(h, "item '", item, "': restore needs restore arguments (StandardRestore, JsonRestore, or a registered ",
            "kind's), not ", type_name(args.type()));
  return *h;
}

const ItemHandler& HandlerRegistry::for_kind(const std::string& item, const std::string& kind) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = kinds_.find(kind);
  NNX_CHECK(it != kinds_.end(), "item '", item, "' was saved by a handler of kind '", kind,
            "', which is not registered in this program (register_item_handler)");
  return *it->second;
}

}  // namespace nnx::checkpoint
