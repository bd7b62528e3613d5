#include "nnx/checkpoint/handlers/json_handler.h"

#include "nnx/checkpoint/format/json_item.h"
#include "nnx/checkpoint/format/schema.h"

namespace nnx::checkpoint {

std::string JsonHandler::kind() const { return kJsonItemKind; }

io::PendingWrites JsonHandler::save(const SaveContext& ctx, const std::string& name, const ItemArgs& args) const {
  write_json(ctx.file, name, args.get_if<JsonSave>()->value);
  return {};
}

void JsonHandler::restore(const RestoreContext& ctx, const std::string& name, const ItemArgs&, Restored& out) const {
  out.json.emplace(name, read_json(ctx.file, name));
}

nlohmann::json JsonHandler::describe(const H5File& file, const std::string& name) const { return read_json(file, name); }

}  // namespace nnx::checkpoint
