#include "nnx/checkpoint/handlers/state_handler.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "nnx/checkpoint/format/schema.h"
#include "nnx/checkpoint/shard_planner.h"
#include "nnx/framework/error.h"

namespace nnx::checkpoint {

std::string StateHandler::kind() const { return kStateItemKind; }

io::PendingWrites StateHandler::save(const SaveContext& ctx, const std::string& name, const ItemArgs& args) const {
  return write_state(ctx.file, name, args.get_if<StandardSave>()->state, ctx.options);
}

io::PendingWrites StateHandler::save_shard(const SaveContext& ctx, const std::string& name, const ItemArgs& args) const {
  State mine;
  for (const auto& [p, vs] : args.get_if<StandardSave>()->state)
    if (ctx.plan.at(name, p).writes_shard(ctx.rank)) mine.insert(p, vs);
  return write_state(ctx.file, name, mine, ctx.options);
}

io::PendingWrites StateHandler::save_global(const SaveContext& ctx, const std::string& name, const ItemArgs& args) const {
  const State& state = args.get_if<StandardSave>()->state;
  std::map<std::string, VirtualSource> sources;
  for (size_t r = 0; r < ctx.shards->size(); ++r)
    for (const auto& d : list_item((*ctx.shards)[r], name)) {
      VirtualSource& src = sources[d.path];
      src.pieces.push_back({shard_file_name(static_cast<int>(r), ctx.world_size), d.checksum, d.shape});
      if (ctx.plan.at(name, d.path).placement == Placement::kEveryRank)
        src.dim = get_partition_spec(state.at(d.path).metadata).sharded_dim();
    }
  return write_state_virtual(ctx.file, name, state, sources, ctx.options);
}

void StateHandler::restore(const RestoreContext& ctx, const std::string& name, const ItemArgs& args, Restored& out) const {
  const auto& r = *args.get_if<StandardRestore>();
  ReadOptions o = r.options;
  if (!o.mesh) o.mesh = ctx.mesh;
  out.states.emplace(name, read_state(ctx.file, name, r.templ, o));
}

nlohmann::json StateHandler::describe(const H5File& file, const std::string& name) const {
  nlohmann::json datasets = nlohmann::json::array();
  for (const auto& d : list_item(file, name))
    datasets.push_back({{"path", d.path}, {"kind", d.kind}, {"dtype", d.dtype}, {"shape", d.shape},
                        {"sharding", d.sharding}, {"checksum", d.checksum}, {"nbytes", d.nbytes}});
  return {{"datasets", datasets}};
}

int64_t StateHandler::nbytes(const ItemArgs& args) const { return args.get_if<StandardSave>()->state.nbytes(); }

ItemArgs StateHandler::snapshot(const ItemArgs& args, const std::string& name, io::HostSnapshot& snapshot) const {
  State copy;
  for (const auto& [path, vs] : args.get_if<StandardSave>()->state) {
    VariableState c = vs;
    c.value = snapshot.copy(vs.value, name + "/" + path);
    copy.insert(path, std::move(c));
  }
  return StandardSave(std::move(copy));
}

std::vector<WriteRequest> StateHandler::plan_writes(const std::string&, const ItemArgs& args) const {
  std::vector<WriteRequest> out;
  for (const auto& [path, vs] : args.get_if<StandardSave>()->state) {
    if (!get_partition_spec(vs.metadata).replicated())
      out.push_back({path, 0, Placement::kEveryRank});
    else if (vs.value.dim() == 0 || vs.value.numel() == 0)
      out.push_back({path, 0, Placement::kGlobalFile});
    else
      out.push_back({path, vs.value.numel() * static_cast<int64_t>(vs.value.element_size()), Placement::kOneRank});
  }
  return out;
}

}  // namespace nnx::checkpoint
