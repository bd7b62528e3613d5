#include "checkpoint/checkpointer.h"

#include <ATen/ATen.h>

#include <chrono>
#include <unordered_set>

#include "checkpoint/fs.h"
#include "framework/error.h"

namespace nnx::checkpoint {

namespace stdfs = std::filesystem;

Composite::Composite(std::initializer_list<std::pair<std::string, ItemArgs>> items) {
  for (const auto& [name, args] : items) add(name, args);
}

Composite& Composite::add(const std::string& name, ItemArgs args) {
  NNX_CHECK(!name.empty() && name != "json" && name.find('/') == std::string::npos,
            "invalid checkpoint item name '", name, "'");
  for (const auto& [n, a] : items_) NNX_CHECK(n != name, "checkpoint item '", name, "' given twice");
  items_.emplace_back(name, std::move(args));
  return *this;
}

int64_t Composite::nbytes() const {
  int64_t n = 0;
  for (const auto& [name, a] : items_)
    if (auto* s = std::get_if<StandardSave>(&a)) n += s->state.nbytes();
  return n;
}

const State& Restored::state(const std::string& item) const {
  auto it = states.find(item);
  NNX_CHECK(it != states.end(), "item '", item, "' was not restored");
  return it->second;
}

const nlohmann::json& Restored::json_item(const std::string& item) const {
  auto it = json.find(item);
  NNX_CHECK(it != json.end(), "JSON item '", item, "' was not restored");
  return it->second;
}

nlohmann::json read_metadata(const stdfs::path& directory) {
  const stdfs::path p = directory / kMetadataFile;
  NNX_CHECK(stdfs::exists(p), "'", directory.string(), "' is not a committed checkpoint (no ",
            kMetadataFile, ")");
  auto j = nlohmann::json::parse(fs::read_file(p), nullptr, false);
  NNX_CHECK(!j.is_discarded() && j.is_object(), "'", p.string(), "' is not valid JSON");
  NNX_CHECK(j.contains("format_version") && j["format_version"].is_number_integer(), "'", p.string(),
            "' has no integer format_version");
  int v = j["format_version"].get<int>();
  NNX_CHECK(v == kFormatVersion, "'", p.string(), "' has format version ", v, "; this build reads version ",
            kFormatVersion);
  NNX_CHECK(j.contains("files") && j["files"].is_object(), "'", p.string(), "' lists no files");
  for (auto it = j["files"].begin(); it != j["files"].end(); ++it) {
    const stdfs::path f = directory / it.key();
    NNX_CHECK(stdfs::exists(f), "checkpoint file '", f.string(), "' is missing (listed in ", kMetadataFile, ")");
    int64_t want = it.value().at("size").get<int64_t>();
    int64_t have = static_cast<int64_t>(stdfs::file_size(f));
    NNX_CHECK(want == have, "checkpoint file '", f.string(), "' has ", have, " bytes, metadata says ", want,
              " (truncated or replaced)");
  }
  return j;
}

VerifyReport verify(const stdfs::path& directory) {
  VerifyReport r;
  auto fail = [&](const std::string& s) {
    r.ok = false;
    r.problems.push_back(s);
  };
  nlohmann::json meta;
  try {
    meta = read_metadata(directory);
  } catch (const Error& e) {
    fail(e.what());
    return r;
  }
  for (auto it = meta["files"].begin(); it != meta["files"].end(); ++it) {
    const stdfs::path f = directory / it.key();
    auto [size, sum] = fs::file_size_and_checksum(f);
    r.bytes_checked += size;
    const std::string want = it.value().value("checksum", "");
    if (sum != want) fail("'" + f.string() + "': file checksum " + sum + ", metadata says " + want);
  }
  try {
    H5File file = H5File::open((directory / kCheckpointFile).string());
    for (const auto& item : list_items(file)) {
      for (const auto& d : list_item(file, item)) {
        try {
          State one;
          at::Tensor t = at::empty(d.shape, at::TensorOptions().dtype(dtype_from_name(d.dtype)).device(at::kMeta));
          one.insert(d.path, VariableState{Kind::define(d.kind), t, {}});
          ReadOptions ro;
          ro.allow_extra = true;
          read_state(file, item, one, ro);
          ++r.datasets_checked;
        } catch (const Error& e) {
          fail(e.what());
        }
      }
    }
    for (const auto& item : list_json_items(file)) {
      try {
        read_json(file, item);
      } catch (const Error& e) {
        fail(e.what());
      }
    }
  } catch (const Error& e) {
    fail(e.what());
  }
  return r;
}

void Checkpointer::save(const stdfs::path& path, const Composite& args, const nlohmann::json& metadata) {
  NNX_CHECK(!stdfs::exists(path), "checkpoint '", path.string(), "' already exists; it is never overwritten");
  const stdfs::path tmp = path.string() + ".tmp-" + fs::unique_suffix();
  std::error_code ec;
  stdfs::create_directories(tmp, ec);
  NNX_CHECK_IO(!ec, "cannot create checkpoint directory '", tmp.string(), "': ", ec.message());
  try {
    const stdfs::path h5 = tmp / kCheckpointFile;
    nlohmann::json items = nlohmann::json::object();
    {
      H5File file = H5File::create(h5.string());
      for (const auto& [name, a] : args.items()) {
        if (auto* s = std::get_if<StandardSave>(&a)) {
          write_state(file, name, s->state, write_options);
          items[name] = "state";
        } else if (auto* j = std::get_if<JsonSave>(&a)) {
          write_json(file, name, j->value);
          items[name] = "json";
        } else {
          NNX_CHECK(false, "item '", name, "': save needs StandardSave or JsonSave arguments");
        }
      }
      file.close();
    }
    fs::fsync_path(h5);
    auto [size, sum] = fs::file_size_and_checksum(h5);
    nlohmann::json meta = metadata.is_object() ? metadata : nlohmann::json::object();
    meta["format"] = "nnx-checkpoint";
    meta["format_version"] = kFormatVersion;
    meta["items"] = items;
    if (!meta.contains("world_size")) meta["world_size"] = 1;
    meta["time"] = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    meta["files"] = {{kCheckpointFile, {{"size", size}, {"checksum", sum}}}};
    fs::write_file_synced(tmp / kMetadataFile, meta.dump(2));
    fs::fsync_path(tmp);
    fs::rename_no_replace(tmp, path);
  } catch (...) {
    std::error_code ec;
    stdfs::remove_all(tmp, ec);
    throw;
  }
}

Restored Checkpointer::restore(const stdfs::path& path, const Composite& args) const {
  nlohmann::json meta = read_metadata(path);
  H5File file = H5File::open((path / kCheckpointFile).string());
  Restored out;
  for (const auto& [name, a] : args.items()) {
    NNX_CHECK(meta["items"].contains(name), "checkpoint '", path.string(), "' has no item '", name, "'");
    if (auto* s = std::get_if<StandardRestore>(&a)) {
      out.states.emplace(name, read_state(file, name, s->templ, s->options));
    } else if (std::get_if<JsonRestore>(&a)) {
      out.json.emplace(name, read_json(file, name));
    } else {
      NNX_CHECK(false, "item '", name, "': restore needs StandardRestore or JsonRestore arguments");
    }
  }
  return out;
}

void StandardCheckpointer::save(const stdfs::path& path, const State& state) {
  checkpointer_.save(path, Composite{{"state", StandardSave(state)}});
}

State StandardCheckpointer::restore(const stdfs::path& path, const State& templ, ReadOptions options) const {
  return checkpointer_.restore(path, Composite{{"state", StandardRestore(templ, std::move(options))}})
      .state("state");
}

Composite snapshot_to_host(const Composite& args) {
  Composite out;
  for (const auto& [name, a] : args.items()) {
    if (auto* s = std::get_if<StandardSave>(&a)) {
      State copy;
      for (const auto& [path, vs] : s->state) {
        NNX_CHECK(vs.value.defined() && !vs.value.is_meta(), "cannot save '", name, "/", path,
                  "': the tensor is abstract or undefined");
        VariableState c = vs;
        c.value = vs.value.detach().to(at::kCPU, /*non_blocking=*/false, /*copy=*/true).contiguous();
        copy.insert(path, std::move(c));
      }
      out.add(name, StandardSave(std::move(copy)));
    } else {
      out.add(name, a);
    }
  }
  return out;
}

AsyncCheckpointer::~AsyncCheckpointer() {
  if (worker_.joinable()) worker_.join();
}

bool AsyncCheckpointer::in_progress() const {
  std::lock_guard<std::mutex> lock(mu_);
  return worker_.joinable();
}

void AsyncCheckpointer::wait_until_finished() {
  if (worker_.joinable()) worker_.join();
  std::exception_ptr e;
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::swap(e, error_);
  }
  if (e) std::rethrow_exception(e);
}

void AsyncCheckpointer::save(const stdfs::path& path, const Composite& args, const nlohmann::json& metadata) {
  save_async(path, args, metadata, nullptr);
}

void AsyncCheckpointer::save_async(const stdfs::path& path, const Composite& args,
                                   const nlohmann::json& metadata, std::function<void()> on_commit) {
  wait_until_finished();
  NNX_CHECK(!stdfs::exists(path), "checkpoint '", path.string(), "' already exists; it is never overwritten");
  Composite snap = snapshot_to_host(args);
  worker_ = std::thread([this, path, snap = std::move(snap), metadata, on_commit = std::move(on_commit)] {
    try {
      Checkpointer::save(path, snap, metadata);
      if (on_commit) on_commit();
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      error_ = std::current_exception();
    }
  });
}

}  // namespace nnx::checkpoint
