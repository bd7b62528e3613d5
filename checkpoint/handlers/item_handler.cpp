#include "nnx/checkpoint/handlers/item_handler.h"

namespace nnx::checkpoint {

std::vector<WriteRequest> ItemHandler::plan_writes(const std::string&, const ItemArgs&) const { return {}; }

io::PendingWrites ItemHandler::save_shard(const SaveContext&, const std::string&, const ItemArgs&) const { return {}; }

io::PendingWrites ItemHandler::save_global(const SaveContext& ctx, const std::string& name, const ItemArgs& args) const {
  return save(ctx, name, args);
}

int64_t ItemHandler::nbytes(const ItemArgs&) const { return 0; }

ItemArgs ItemHandler::snapshot(const ItemArgs& args, const std::string&, io::HostSnapshot&) const { return args; }

}  // namespace nnx::checkpoint
