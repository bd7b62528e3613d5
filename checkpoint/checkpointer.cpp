#include "nnx/checkpoint/checkpointer.h"

#include <xxhash.h>

#include <functional>

#include "nnx/checkpoint/checkpoint_info.h"
#include "nnx/checkpoint/commit.h"
#include "nnx/checkpoint/coordinator.h"
#include "nnx/checkpoint/format/directory.h"
#include "nnx/checkpoint/format/schema.h"
#include "nnx/checkpoint/handlers/registry.h"
#include "nnx/framework/distributed.h"
#include "nnx/framework/error.h"

namespace nnx::checkpoint {

namespace stdfs = std::filesystem;

namespace {

// Which of a handler's writes a file gets: save (one rank), save_shard or save_global.
using ItemSave = io::PendingWrites (ItemHandler::*)(const SaveContext&, const std::string&, const ItemArgs&) const;

// Creates `path`, writes every item of `args` with `write`, commits the file; its entry.
FileEntry write_file(const stdfs::path& path, const Composite& args, const std::vector<const ItemHandler*>& handlers,
                     const std::function<SaveContext(H5File&)>& context, const ItemSave& write) {
  H5File file = H5File::create(path.string(), H5File::meta_block_size(args.nbytes()));
  const SaveContext ctx = context(file);
  io::PendingWrites pending;
  for (size_t i = 0; i < args.items().size(); ++i)
    pending.merge((handlers[i]->*write)(ctx, args.items()[i].first, args.items()[i].second));
  const auto [size, sum] = file.commit(std::move(pending));
  return FileEntry{path.filename().string(), size, sum, file.structure()};
}

// Every rank must compute the same writer assignment (a variable sharded on some ranks only, or
// shaped differently per rank, would make two ranks write it, or none).
int64_t plan_digest(const WritePlan& plan) {
  const std::string desc = plan.digest_text();
  return static_cast<int64_t>(XXH3_64bits(desc.data(), desc.size()) >> 1);  // >= 0: -h exists
}

// Every item's writes (its handler's plan_writes), balanced over the n ranks.
WritePlan plan_writes(const Composite& args, const std::vector<const ItemHandler*>& handlers, int n) {
  std::vector<std::pair<std::string, std::vector<WriteRequest>>> requests;
  for (size_t i = 0; i < handlers.size(); ++i)
    requests.emplace_back(args.items()[i].first, handlers[i]->plan_writes(args.items()[i].first, args.items()[i].second));
  return WritePlan::balance(requests, n);
}

nlohmann::json save_metadata(const nlohmann::json& user, const Composite& args,
                             const std::vector<const ItemHandler*>& handlers, int world_size,
                             const std::vector<FileEntry>& files) {
  nlohmann::json meta = user.is_object() ? user : nlohmann::json::object();
  meta["format"] = kFormatName;
  meta["format_version"] = kFormatVersion;
  meta["items"] = nlohmann::json::object();
  for (size_t i = 0; i < handlers.size(); ++i) meta["items"][args.items()[i].first] = handlers[i]->kind();
  if (world_size > 1 || !meta.contains("world_size")) meta["world_size"] = world_size;
  if (!meta.contains("time")) meta["time"] = unix_seconds_now();  // a manager passes its save's start
  meta["files"] = nlohmann::json::object();
  for (const auto& f : files)
    meta["files"][f.name] = {{"size", f.size}, {"checksum", f.checksum}, {"structure", f.structure}};
  return meta;
}

}  // namespace

std::unique_ptr<Coordinator> Checkpointer::coordinator() const {
  if (process_group && process_group->world_size() > 1) return std::make_unique<C10dCoordinator>(process_group);
  return std::make_unique<LocalCoordinator>();
}

void Checkpointer::save(const stdfs::path& path, const Composite& args, const nlohmann::json& metadata) {
  auto coord = coordinator();
  const int rank = coord->rank(), n = coord->world_size();
  std::vector<const ItemHandler*> handlers;  // every item's, before any file is written
  for (const auto& [name, a] : args.items()) handlers.push_back(&HandlerRegistry::global().for_save(name, a));
  const WritePlan plan = n > 1 ? plan_writes(args, handlers, n) : WritePlan();
  auto base = [&](H5File& f) { return SaveContext{f, write_options, rank, n, plan, nullptr}; };
  SaveSteps steps;
  steps.plan_digest = plan_digest(plan);
  steps.plan_mismatch = "the ranks' states do not agree on which rank writes which tensor (a variable sharded on "
                        "some ranks only, or a replicated variable shaped differently per rank)";
  steps.write_rank_files = [&](const stdfs::path& tmp) -> std::vector<FileEntry> {
    if (n == 1) return {write_file(tmp / kCheckpointFile, args, handlers, base, &ItemHandler::save)};
    return {write_file(tmp / shard_file_name(rank, n), args, handlers, base, &ItemHandler::save_shard)};
  };
  steps.write_leader_files = [&](const stdfs::path& tmp) -> std::vector<FileEntry> {
    if (n == 1) return {};
    std::vector<H5File> shards;
    for (int r = 0; r < n; ++r) shards.push_back(H5File::open((tmp / shard_file_name(r, n)).string()));
    auto global = [&](H5File& f) { return SaveContext{f, write_options, rank, n, plan, &shards}; };
    return {write_file(tmp / kCheckpointFile, args, handlers, global, &ItemHandler::save_global)};
  };
  steps.metadata = [&](const std::vector<FileEntry>& files) { return save_metadata(metadata, args, handlers, n, files); };
  commit_save(*coord, "nnx/save/" + std::to_string(save_seq_++), path, steps);
}

Restored Checkpointer::restore(const stdfs::path& path, const Composite& args) const {
  auto coord = coordinator();
  std::optional<Mesh> mesh;
  if (process_group) mesh = Mesh{process_group->rank(), process_group->world_size()};
  Restored out;
  std::exception_ptr error;
  try {
    const nlohmann::json meta = read_metadata(path);
    H5File file = open_verified(path, meta);
    const RestoreContext ctx{file, meta, mesh};
    for (const auto& [name, a] : args.items()) {
      NNX_CHECK(meta["items"].contains(name), "checkpoint '", path.string(), "' has no item '", name, "'");
      const ItemHandler& h = HandlerRegistry::global().for_restore(name, a);
      const std::string stored = meta["items"][name].get<std::string>();
      NNX_CHECK(stored == h.kind(), "checkpoint '", path.string(), "' item '", name, "' is a '", stored,
                "' item; the restore arguments given read '", h.kind(), "' items");
      h.restore(ctx, name, a, out);
    }
  } catch (...) {
    error = std::current_exception();
  }
  // Collective: a rank reading only its shard checks only the pieces it reads, so ranks can
  // disagree about a corrupt checkpoint. Every rank learns every rank's outcome and all fail
  // (or fall back) together.
  all_succeed_or_throw(*coord, "nnx/restore/" + std::to_string(restore_seq_++), error,
                       "restore of '" + path.string() + "'");
  return out;
}

void StandardCheckpointer::save(const stdfs::path& path, const State& state) {
  checkpointer_.save(path, Composite{{"state", StandardSave(state)}});
}

State StandardCheckpointer::restore(const stdfs::path& path, const State& templ, ReadOptions options) const {
  return checkpointer_.restore(path, Composite{{"state", StandardRestore(templ, std::move(options))}}).state("state");
}

}  // namespace nnx::checkpoint
