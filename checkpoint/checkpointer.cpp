#include "checkpoint/checkpointer.h"

#include "checkpoint/checkpoint_info.h"

#include <ATen/ATen.h>
#include <sys/mman.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <system_error>
#include <thread>
#include <tuple>
#include <unordered_set>

#include <xxhash.h>

#include "checkpoint/fs.h"
#include "checkpoint/metadata.h"
#include "framework/distributed.h"
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
  NNX_CHECK(stdfs::exists(p), "'", directory.string(), "' is not a committed checkpoint (no ", kMetadataFile, ")");
  nlohmann::json j = parse_metadata(fs::read_file(p), p.string());
  for (auto it = j["files"].begin(); it != j["files"].end(); ++it) {
    const stdfs::path f = directory / it.key();
    std::error_code ec;  // a step may be deleted (retention on rank 0) while another process reads it
    const auto size = stdfs::file_size(f, ec);
    NNX_CHECK(!ec, "checkpoint file '", f.string(), "' is missing (listed in ", kMetadataFile, ")");
    int64_t want = it.value().at("size").get<int64_t>();
    int64_t have = static_cast<int64_t>(size);
    NNX_CHECK(want == have, "checkpoint file '", f.string(), "' has ", have, " bytes, metadata says ", want,
              " (truncated or replaced)");
  }
  return j;
}

namespace {
// The structure check of one listed file (see open_verified).
void verify_file_structure(const stdfs::path& file, const nlohmann::json& entry) {
  const auto st = entry.find("structure");
  if (st == entry.end()) {  // written before structure checksums: the whole file
    const std::string want = entry.at("checksum").get<std::string>();
    const std::string have = fs::file_size_and_checksum(file).second;
    NNX_CHECK(have == want, "checkpoint file '", file.string(), "' is corrupt: checksum ", have, ", ", kMetadataFile,
              " says ", want, "; not opened");
    return;
  }
  std::vector<fs::ByteRange> skip;
  for (const auto& r : st->at("skip")) skip.push_back({r.at(0).get<int64_t>(), r.at(1).get<int64_t>()});
  const std::string want = st->at("checksum").get<std::string>();
  const std::string have = fs::checksum_outside(file, skip).second;
  NNX_CHECK(have == want, "checkpoint file '", file.string(), "' is corrupt: the checksum of its HDF5 structure is ",
            have, ", ", kMetadataFile, " says ", want, "; not opened");
}
}  // namespace

H5File open_verified(const stdfs::path& directory, const nlohmann::json& meta) {
  for (auto it = meta.at("files").begin(); it != meta.at("files").end(); ++it)
    verify_file_structure(directory / it.key(), it.value());
  return H5File::open((directory / kCheckpointFile).string());
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
  if (!r.ok) return r;  // a corrupt file is never handed to HDF5's parser
  try {
    H5File file = open_verified(directory, meta);
    for (const auto& item : list_items(file)) {
      for (const auto& d : list_item(file, item)) {
        try {
          State one;
          at::Tensor t = at::empty(d.shape, at::TensorOptions().dtype(dtype_from_name(d.dtype)).device(at::kMeta));
          one.insert(d.path, VariableState{Kind::define(d.kind), t, {}});
          ReadOptions ro;
          ro.allow_extra = true;
          State got = read_state(file, item, one, ro);
          const at::Tensor& v = got.at(d.path).value;
          if (v.is_floating_point() && v.numel() > 0 && !at::isfinite(v.to(at::kFloat)).all().item<bool>())
            fail("'" + (directory / kCheckpointFile).string() + "' dataset /" + item + "/" + d.path +
                 " holds non-finite values (NaN or Inf)");
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
  if (process_group && process_group->world_size() > 1) return save_distributed(path, args, metadata);
  NNX_CHECK(!stdfs::exists(path), "checkpoint '", path.string(), "' already exists; it is never overwritten");
  const stdfs::path tmp = path.string() + ".tmp-" + fs::unique_suffix();
  std::error_code ec;
  stdfs::create_directories(tmp, ec);
  NNX_CHECK_IO(!ec, "cannot create checkpoint directory '", tmp.string(), "': ", ec.message());
  try {
    const stdfs::path h5 = tmp / kCheckpointFile;
    nlohmann::json items = nlohmann::json::object();
    int64_t size = 0;
    std::string sum;
    nlohmann::json structure;
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
      std::tie(size, sum) = file.commit();
      structure = file.structure();
    }
    nlohmann::json meta = metadata.is_object() ? metadata : nlohmann::json::object();
    meta["format"] = "nnx-checkpoint";
    meta["format_version"] = kFormatVersion;
    meta["items"] = items;
    if (!meta.contains("world_size")) meta["world_size"] = 1;
    if (!meta.contains("time")) meta["time"] = unix_seconds_now();  // a manager passes its save's start
    meta["files"] = {{kCheckpointFile, {{"size", size}, {"checksum", sum}, {"structure", structure}}}};
    fs::write_file_synced(tmp / kMetadataFile, meta.dump(2));
    fs::fsync_path(tmp);
    fs::rename_no_replace(tmp, path);
  } catch (...) {
    std::error_code ec;
    stdfs::remove_all(tmp, ec);
    throw;
  }
}

std::map<std::string, int> assign_writers(const Composite& args, int world_size) {
  struct E {
    std::string key;
    int64_t bytes;
  };
  std::vector<E> es;
  std::map<std::string, int> out;
  for (const auto& [name, a] : args.items())
    if (auto* s = std::get_if<StandardSave>(&a))
      for (const auto& [path, vs] : s->state) {
        const std::string key = name + "/" + path;
        if (!get_partition_spec(vs.metadata).replicated()) {
          out[key] = kEveryRank;  // each rank writes its own shard
        } else if (vs.value.dim() == 0 || vs.value.numel() == 0) {
          out[key] = -1;
        } else {
          es.push_back({key, vs.value.numel() * static_cast<int64_t>(vs.value.element_size())});
        }
      }
  std::sort(es.begin(), es.end(), [](const E& a, const E& b) { return a.bytes != b.bytes ? a.bytes > b.bytes : a.key < b.key; });
  std::vector<int64_t> load(static_cast<size_t>(world_size), 0);
  for (const auto& e : es) {
    int r = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
    load[static_cast<size_t>(r)] += e.bytes;
    out[e.key] = r;
  }
  return out;
}

namespace {
std::string shard_name(int r, int n) { return "shard-" + std::to_string(r) + "-of-" + std::to_string(n) + ".h5"; }
}  // namespace

void Checkpointer::save_distributed(const stdfs::path& path, const Composite& args, const nlohmann::json& metadata) {
  auto& pg = *process_group;
  const int rank = pg.rank(), n = pg.world_size();
  const std::string key = "nnx/save/" + std::to_string(save_seq_++);
  // 1. Rank 0 creates the temporary directory and tells the others its name (or its error).
  if (rank == 0) {
    std::string msg;
    if (stdfs::exists(path)) {
      msg = "error:checkpoint '" + path.string() + "' already exists; it is never overwritten";
    } else {
      stdfs::path tmp = path.string() + ".tmp-" + fs::unique_suffix();
      std::error_code ec;
      stdfs::create_directories(tmp, ec);
      msg = ec ? "error:cannot create checkpoint directory '" + tmp.string() + "': " + ec.message() : "ok:" + tmp.string();
    }
    pg.store_set(key + "/tmp", msg);
  }
  const std::string t = pg.store_get(key + "/tmp");
  NNX_CHECK_IO(t.rfind("ok:", 0) == 0, t.substr(6));
  const stdfs::path tmp = t.substr(3);
  // Every rank must be saving the same step: a rank whose n-th save is another path than rank
  // 0's (a save decided on per-rank state) fails the save everywhere instead of mixing steps.
  const std::string expected_prefix = path.string() + ".tmp-";
  const bool same_path = tmp.string().rfind(expected_prefix, 0) == 0;
  // Rank 0 removes the temporary directory whenever the save ends by an exception (a failed
  // shard, ranks that disagree, a collective that timed out); a committed step was renamed away.
  struct RemoveTmpOnError {
    stdfs::path dir;
    int uncaught = std::uncaught_exceptions();
    ~RemoveTmpOnError() {
      if (!dir.empty() && std::uncaught_exceptions() > uncaught) {
        std::error_code ec;
        stdfs::remove_all(dir, ec);
      }
    }
  } cleanup{rank == 0 ? tmp : stdfs::path()};
  // 2. Every rank writes its share.
  const auto writers = assign_writers(args, n);
  {
    // Every rank must compute the same assignment (a variable sharded on some ranks only, or
    // shaped differently per rank, would make two ranks write it, or none).
    std::string desc;
    for (const auto& [k, w] : writers) desc += k + "=" + std::to_string(w) + ";";
    const auto h = static_cast<int64_t>(XXH3_64bits(desc.data(), desc.size()) >> 1);
    std::vector<at::Tensor> v = {at::tensor({h, -h}, at::kLong)};
    pg.all_reduce_max(v);
    if (v[0][0].item<int64_t>() != -v[0][1].item<int64_t>()) {
      NNX_CHECK(false, "distributed save of '", path.string(), "': the ranks' states do not agree on which rank writes ",
                "which tensor (a variable sharded on some ranks only, or a replicated variable shaped differently per rank)");
    }
  }
  std::string my_error;
  if (!same_path)
    my_error = "this rank saves '" + path.string() + "' while rank 0 saves '" +
               tmp.string().substr(0, tmp.string().rfind(".tmp-")) + "' (ranks must save the same steps together)";
  else try {
    const stdfs::path shard = tmp / shard_name(rank, n);
    H5File f = H5File::create(shard.string());
    for (const auto& [name, a] : args.items())
      if (auto* s = std::get_if<StandardSave>(&a)) {
        State mine;
        for (const auto& [p, vs] : s->state)
          if (int w = writers.at(name + "/" + p); w == rank || w == kEveryRank) mine.insert(p, vs);
        write_state(f, name, mine, write_options);
      }
    // Each rank hashes its own shard (while its disk writes it) for rank 0's metadata.
    auto [size, sum] = f.commit();
    pg.store_set(key + "/file" + std::to_string(rank),
                 nlohmann::json{{"size", size}, {"checksum", sum}, {"structure", f.structure()}}.dump());
  } catch (const std::exception& e) {
    my_error = e.what();
  }
  pg.store_set(key + "/rank" + std::to_string(rank), my_error.empty() ? "ok" : my_error);
  // 3. Everyone learns whether every shard is written (a missing rank times out here).
  std::vector<at::Tensor> flag = {at::full({1}, my_error.empty() ? 0 : 1, at::kInt)};
  pg.all_reduce_sum(flag);
  if (flag[0].item<int>() > 0) {
    std::string all;
    for (int r = 0; r < n; ++r) {
      std::string v = pg.store_get(key + "/rank" + std::to_string(r));
      if (v != "ok") all += "\n  rank " + std::to_string(r) + ": " + v;
    }
    NNX_CHECK_IO(false, "distributed save of '", path.string(), "' failed:", all);
  }
  // 4. Rank 0 presents the shards as one file, writes the metadata last and commits.
  if (rank == 0) {
    std::string err;
    try {
      const stdfs::path h5 = tmp / kCheckpointFile;
      nlohmann::json items = nlohmann::json::object();
      int64_t h5_size = 0;
      std::string h5_sum;
      nlohmann::json h5_structure;
      {
        std::vector<H5File> shards;
        for (int r = 0; r < n; ++r) shards.push_back(H5File::open((tmp / shard_name(r, n)).string()));
        H5File file = H5File::create(h5.string());
        for (const auto& [name, a] : args.items()) {
          if (auto* s = std::get_if<StandardSave>(&a)) {
            // A replicated tensor has one piece (its writer's); a sharded one a piece per rank.
            std::map<std::string, VirtualSource> sources;
            for (int r = 0; r < n; ++r)
              for (const auto& d : list_item(shards[static_cast<size_t>(r)], name)) {
                VirtualSource& src = sources[d.path];
                src.pieces.push_back({shard_name(r, n), d.checksum, d.shape});
                if (writers.at(name + "/" + d.path) == kEveryRank)
                  src.dim = get_partition_spec(s->state.at(d.path).metadata).sharded_dim();
              }
            write_state_virtual(file, name, s->state, sources, write_options);
            items[name] = "state";
          } else if (auto* j = std::get_if<JsonSave>(&a)) {
            write_json(file, name, j->value);
            items[name] = "json";
          }
        }
        std::tie(h5_size, h5_sum) = file.commit();
        h5_structure = file.structure();
      }
      nlohmann::json meta = metadata.is_object() ? metadata : nlohmann::json::object();
      meta["format"] = "nnx-checkpoint";
      meta["format_version"] = kFormatVersion;
      meta["items"] = items;
      meta["world_size"] = n;
      if (!meta.contains("time")) meta["time"] = unix_seconds_now();  // a manager passes its save's start
      meta["files"] = nlohmann::json::object();
      meta["files"][kCheckpointFile] = {{"size", h5_size}, {"checksum", h5_sum}, {"structure", h5_structure}};
      for (int r = 0; r < n; ++r) {
        const std::string reported = pg.store_get(key + "/file" + std::to_string(r));
        auto j = nlohmann::json::parse(reported, nullptr, false);
        const bool ok = j.is_object() && j.contains("size") && j["size"].is_number_unsigned() && j.contains("checksum") &&
                        j["checksum"].is_string() && j["checksum"].get<std::string>().rfind("xxh3_64:", 0) == 0;
        NNX_CHECK(ok && j.contains("structure") && j["structure"].is_object(), "rank ", r,
                  " reported a malformed size and checksum of its shard: '", reported, "'");
        meta["files"][shard_name(r, n)] = {{"size", j["size"]}, {"checksum", j["checksum"]}, {"structure", j["structure"]}};
      }
      fs::write_file_synced(tmp / kMetadataFile, meta.dump(2));
      fs::fsync_path(tmp);
      fs::rename_no_replace(tmp, path);
    } catch (const std::exception& e) {
      err = e.what();
      std::error_code ec;
      stdfs::remove_all(tmp, ec);
    }
    pg.store_set(key + "/commit", err.empty() ? "ok" : err);
  }
  const std::string c = pg.store_get(key + "/commit");
  NNX_CHECK_IO(c == "ok", "distributed save of '", path.string(), "' failed on rank 0: ", c);
}

Restored Checkpointer::restore(const stdfs::path& path, const Composite& args) const {
  auto read_all = [&] {
    nlohmann::json meta = read_metadata(path);
    H5File file = open_verified(path, meta);
    Restored out;
    for (const auto& [name, a] : args.items()) {
      NNX_CHECK(meta["items"].contains(name), "checkpoint '", path.string(), "' has no item '", name, "'");
      if (auto* s = std::get_if<StandardRestore>(&a)) {
        ReadOptions ro = s->options;
        if (!ro.mesh && process_group) ro.mesh = Mesh{process_group->rank(), process_group->world_size()};
        out.states.emplace(name, read_state(file, name, s->templ, ro));
      } else if (std::get_if<JsonRestore>(&a)) {
        out.json.emplace(name, read_json(file, name));
      } else {
        NNX_CHECK(false, "item '", name, "': restore needs StandardRestore or JsonRestore arguments");
      }
    }
    return out;
  };
  if (!process_group || process_group->world_size() == 1) return read_all();
  // Collective: a rank reading only its shard checks only the pieces it reads, so ranks can
  // disagree about a corrupt checkpoint. Every rank learns every rank's outcome and all fail
  // (or fall back) together.
  auto& pg = *process_group;
  const std::string key = "nnx/restore/" + std::to_string(restore_seq_++);
  Restored out;
  std::string my_error;
  try {
    out = read_all();
  } catch (const std::exception& e) {
    my_error = e.what();
  }
  pg.store_set(key + "/rank" + std::to_string(pg.rank()), my_error.empty() ? "ok" : my_error);
  std::vector<at::Tensor> flag = {at::full({1}, my_error.empty() ? 0 : 1, at::kInt)};
  pg.all_reduce_sum(flag);
  if (flag[0].item<int>() == 0) return out;
  std::string first;
  for (int r = 0; r < pg.world_size() && first.empty(); ++r) {
    std::string v = pg.store_get(key + "/rank" + std::to_string(r));
    if (v != "ok") first = r == pg.rank() ? v : "rank " + std::to_string(r) + ": " + v;
  }
  NNX_CHECK(my_error.empty(), my_error);
  NNX_CHECK(false, "restore of '", path.string(), "' failed on another rank: ", first);
}

void StandardCheckpointer::save(const stdfs::path& path, const State& state) {
  checkpointer_.save(path, Composite{{"state", StandardSave(state)}});
}

State StandardCheckpointer::restore(const stdfs::path& path, const State& templ, ReadOptions options) const {
  return checkpointer_.restore(path, Composite{{"state", StandardRestore(templ, std::move(options))}})
      .state("state");
}

namespace {

// A host tensor for a snapshot. One of 1 MiB or more gets a mapping of its own (page-aligned,
// so the direct write path writes it without staging), marked for transparent huge pages where
// the kernel allows (fewer page faults and TLB misses for the copy; only whole 2 MiB blocks
// inside the mapping become huge pages, so the last one is not padded). Its own mapping, not
// malloc's heap, so the huge-page advice stays on this buffer and is unmapped with it.
at::Tensor host_buffer(at::IntArrayRef sizes, at::ScalarType dtype) {
  int64_t numel = 1;
  for (int64_t d : sizes) numel *= d;
  const size_t nbytes = static_cast<size_t>(numel) * at::elementSize(dtype);
  if (nbytes < (size_t(1) << 20)) return at::empty(sizes, at::TensorOptions().dtype(dtype));
  const size_t len = (nbytes + 4095) / 4096 * 4096;
  void* p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  ::madvise(p, len, MADV_HUGEPAGE);
  return at::from_blob(p, sizes, [len](void* q) { ::munmap(q, len); }, at::TensorOptions().dtype(dtype));
}

// Copies `n` bytes with non-temporal (streaming) stores when `dst` is 16-byte aligned on x86-64:
// a snapshot is not read again until the background write, so its lines need not go through
// the cache, which saves the read-for-ownership of every destination line. The copy is
// memory-bound: 400 MB in 4 MiB pieces on 2 threads took 17-19 ms this way and 26-29 ms with
// memcpy on the test machine. Elsewhere it is memcpy.
void copy_streaming(char* dst, const char* src, size_t n) {
#if defined(__SSE2__)
  if (reinterpret_cast<uintptr_t>(dst) % 16 == 0) {
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
      const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 16));
      const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 32));
      const __m128i d = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 48));
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), a);
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 16), b);
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 32), c);
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 48), d);
    }
    _mm_sfence();  // streaming stores are weakly ordered: make them visible before the join
    std::memcpy(dst + i, src + i, n - i);
    return;
  }
#endif
  std::memcpy(dst, src, n);
}

}  // namespace

Composite snapshot_to_host(const Composite& args, std::vector<at::Tensor>* reuse) {
  Composite out;
  size_t next = 0;
  std::vector<at::Tensor> used;
  // Contiguous CPU sources are copied below in 4 MiB pieces on several threads (copy_streaming);
  // anything else (views, device tensors) is copied by ATen here.
  struct Piece {
    char* dst;
    const char* src;
    size_t n;
  };
  std::vector<Piece> pieces;
  constexpr size_t kPiece = size_t(4) << 20;
  for (const auto& [name, a] : args.items()) {
    if (auto* s = std::get_if<StandardSave>(&a)) {
      State copy;
      for (const auto& [path, vs] : s->state) {
        NNX_CHECK(vs.value.defined() && !vs.value.is_meta(), "cannot save '", name, "/", path,
                  "': the tensor is abstract or undefined");
        VariableState c = vs;
        const at::Tensor src = vs.value.detach();
        at::Tensor buf;
        if (reuse && next < reuse->size()) {
          at::Tensor& cand = (*reuse)[next];
          if (cand.scalar_type() == src.scalar_type() && cand.numel() == src.numel() && cand.use_count() == 1)
            buf = cand.view(src.sizes());
        }
        ++next;
        if (!buf.defined()) buf = host_buffer(src.sizes(), src.scalar_type());
        if (src.is_cpu() && src.is_contiguous()) {
          const size_t n = static_cast<size_t>(src.numel()) * src.element_size();
          for (size_t off = 0; off < n; off += kPiece)
            pieces.push_back({static_cast<char*>(buf.data_ptr()) + off, static_cast<const char*>(src.data_ptr()) + off,
                              std::min(kPiece, n - off)});
        } else {
          buf.copy_(src);  // a view, or a device tensor (copied to host, synchronously)
        }
        c.value = buf;
        used.push_back(buf);
        copy.insert(path, std::move(c));
      }
      out.add(name, StandardSave(std::move(copy)));
    } else {
      out.add(name, a);
    }
  }
  // The caller waits for this copy, so it may use the machine's cores (at most 4: the copy is
  // bound by memory bandwidth). ATen's parallel_for is an OpenMP pragma in a header, inert in
  // code built without -fopenmp, so the pieces go to plain threads.
  const size_t threads = std::min<size_t>({std::max(1u, std::thread::hardware_concurrency()), pieces.size(), 4});
  auto copy_every = [&](size_t first) {
    for (size_t i = first; i < pieces.size(); i += threads) copy_streaming(pieces[i].dst, pieces[i].src, pieces[i].n);
  };
  std::vector<std::thread> helpers;
  size_t started = 1;
  try {
    for (; started < threads; ++started) helpers.emplace_back(copy_every, started);
  } catch (const std::system_error&) {  // no thread to be had: this one copies their share
  }
  for (size_t t = started; t < threads; ++t) copy_every(t);
  copy_every(0);
  for (auto& h : helpers) h.join();
  if (reuse) *reuse = std::move(used);
  return out;
}

AsyncCheckpointer::~AsyncCheckpointer() {
  if (worker_.joinable()) worker_.join();
}

AsyncCheckpointer::Flight AsyncCheckpointer::current() const {
  std::lock_guard<std::mutex> lock(mu_);
  return flight_;
}

bool AsyncCheckpointer::in_progress() const {
  Flight f = current();
  return f.done.valid() && f.done.wait_for(std::chrono::seconds(0)) != std::future_status::ready;
}

void AsyncCheckpointer::wait() const {
  Flight f = current();
  if (f.done.valid()) f.done.wait();
}

void AsyncCheckpointer::wait_until_finished() {
  // Waiters share the save's future: each of them sees its failure. The first to return
  // forgets the save, so a later wait does not report the same failure again.
  Flight f = current();
  if (!f.done.valid()) return;
  f.done.wait();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (flight_.id == f.id) flight_.done = {};
  }
  f.done.get();
}

void AsyncCheckpointer::save(const stdfs::path& path, const Composite& args, const nlohmann::json& metadata) {
  save_async(path, args, metadata, nullptr);
}

void AsyncCheckpointer::save_async(const stdfs::path& path, const Composite& args, const nlohmann::json& metadata,
                                   std::function<void()> on_commit,
                                   std::function<void(std::exception_ptr)> on_failure) {
  wait_until_finished();
  if (worker_.joinable()) worker_.join();  // finished: its promise is set
  NNX_CHECK(!stdfs::exists(path), "checkpoint '", path.string(), "' already exists; it is never overwritten");
  Composite snap = snapshot_to_host(args, &buffers_);
  std::promise<void> promise;
  {
    std::lock_guard<std::mutex> lock(mu_);
    flight_ = Flight{promise.get_future().share(), ++next_id_};
  }
  worker_ = std::thread([this, path, snap = std::move(snap), metadata, on_commit = std::move(on_commit),
                         on_failure = std::move(on_failure), promise = std::move(promise)]() mutable {
    try {
      Checkpointer::save(path, snap, metadata);
      if (on_commit) on_commit();
      promise.set_value();
    } catch (...) {
      auto e = std::current_exception();
      try {
        if (on_failure) on_failure(e);
      } catch (...) {  // the waiters must still learn of the failure
      }
      promise.set_exception(e);
    }
  });
}

}  // namespace nnx::checkpoint
