#include "nnx/checkpoint/format/stored_info.h"

#include <nlohmann/json.hpp>

#include "nnx/checkpoint/format/h5_handles.h"
#include "nnx/checkpoint/format/schema.h"
#include "nnx/framework/error.h"

namespace nnx::checkpoint::h5 {

StoredInfo read_info(hid_t dset, const std::string& where) {
  StoredInfo s;
  const auto names = attribute_names(dset, where);
  auto read_string_attr = [&](hid_t obj, const char* name, const std::string& w) -> std::optional<std::string> {
    if (!names.count(name)) return std::nullopt;
    return read_present_string_attr(obj, name, w);
  };
  auto need = [&](const char* name) {
    auto v = read_string_attr(dset, name, where);
    NNX_CHECK(v.has_value(), where, " lacks the attribute '", name, "' (not written by nnx-cpp?)");
    return *v;
  };
  s.kind = need(schema::kKind);
  s.dtype = need(schema::kDtype);
  s.checksum = need(schema::kChecksum);
  s.sharding = read_string_attr(dset, schema::kSharding, where).value_or("");
  NNX_CHECK(names.count(schema::kShape), where, " lacks the attribute 'shape'");
  auto shape = read_i64_array_attr(dset, schema::kShape, where, true);
  s.shape = *shape;
  if (auto pieces = read_string_attr(dset, schema::kPieces, where)) {
    auto j = nlohmann::json::parse(*pieces, nullptr, false);
    bool ok = !j.is_discarded() && j.is_object() && j.contains("dim") && j["dim"].is_number_integer() &&
              j.contains("pieces") && j["pieces"].is_array();
    int64_t next = 0;
    if (ok) {
      s.piece_dim = j["dim"].get<int64_t>();
      ok = s.piece_dim >= 0 && s.piece_dim < static_cast<int64_t>(s.shape.size());
      for (const auto& p : j["pieces"]) {
        if (!ok) break;
        auto integer = [&](const char* k) { return p.contains(k) && p[k].is_number_integer() ? p[k].get<int64_t>() : int64_t(-1); };
        ok = p.is_object() && integer("start") == next && integer("size") > 0 && p.contains("checksum") &&
             p["checksum"].is_string();
        if (ok) {
          s.pieces.push_back({next, p["size"].get<int64_t>(), p["checksum"].get<std::string>()});
          next += s.pieces.back().size;
        }
      }
      ok = ok && next == s.shape[static_cast<size_t>(s.piece_dim)];
    }
    NNX_CHECK(ok, where, " has a malformed 'pieces' attribute (expected {\"dim\", \"pieces\": [{\"start\", \"size\", \"checksum\"}]} covering dimension ",
              s.piece_dim, " of ", format_shape(s.shape), ")");
  }
  auto meta = read_string_attr(dset, schema::kMetadata, where);
  if (meta) {
    auto j = nlohmann::json::parse(*meta, nullptr, false);
    NNX_CHECK(!j.is_discarded() && j.is_object(), where, " has malformed 'metadata' JSON");
    for (auto it = j.begin(); it != j.end(); ++it)
      s.metadata[it.key()] = it.value().is_string() ? it.value().get<std::string>() : it.value().dump();
  }
  return s;
}

}  // namespace nnx::checkpoint::h5
