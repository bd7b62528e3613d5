// The "json" item kind: a JSON value (JsonSave / JsonRestore).
#pragma once

#include "nnx/checkpoint/handlers/item_handler.h"

namespace nnx::checkpoint {

/// Saves a JsonSave's value as /json/<item> (format/json_item.h), on rank 0 only when several
/// ranks save; restores it for JsonRestore.
class JsonHandler : public ItemHandler {
 public:
  std::string kind() const override;
  void restore(const RestoreContext& ctx, const std::string& name, const ItemArgs& args, Restored& out) const override;
  io::PendingWrites save(const SaveContext& ctx, const std::string& name, const ItemArgs& args) const override;
  /// The stored value.
  nlohmann::json describe(const H5File& file, const std::string& name) const override;
};

}  // namespace nnx::checkpoint
