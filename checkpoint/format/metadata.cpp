#include "nnx/checkpoint/format/metadata.h"

#include <cctype>

#include "nnx/framework/error.h"

namespace nnx::checkpoint {

namespace {
// A file's structure checksum: {"checksum": string, "skip": [[offset >= 0, size >= 0], ...]}.
void check_structure(const nlohmann::json& s, const std::string& where, const std::string& file) {
  bool ok = s.is_object() && s.contains("checksum") && s["checksum"].is_string() && s.contains("skip") &&
            s["skip"].is_array();
  if (ok)
    for (const auto& r : s["skip"])
      // Only datasets of 1 MiB or more are skipped: a list of tiny ranges is not ours (and would
      // make the check cut the file into millions of pieces).
      ok = ok && r.is_array() && r.size() == 2 && r[0].is_number_integer() && r[1].is_number_integer() &&
           r[0].get<int64_t>() >= 0 && r[1].get<int64_t>() >= (int64_t(1) << 20);
  NNX_CHECK(ok, "'", where, "': file '", file, "' has a malformed structure checksum");
}
// An item kind names the handler that wrote it (handlers/registry.h): "state", "json", or a
// user kind's name.
bool valid_kind(const nlohmann::json& k) {
  if (!k.is_string() || k.get<std::string>().empty() || k.get<std::string>().size() > 64) return false;
  for (char c : k.get<std::string>())
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-' && c != '.') return false;
  return true;
}

}  // namespace

nlohmann::json parse_metadata(const std::string& text, const std::string& where) {
  auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  NNX_CHECK(!j.is_discarded() && j.is_object(), "'", where, "' is not valid JSON (an object)");
  NNX_CHECK(j.contains("format_version") && j["format_version"].is_number_integer(), "'", where,
            "' has no integer format_version");
  const int64_t v = j["format_version"].get<int64_t>();
  NNX_CHECK(v == kFormatVersion, "'", where, "' has format version ", v, "; this build reads version ", kFormatVersion);
  NNX_CHECK(j.contains("files") && j["files"].is_object() && !j["files"].empty(), "'", where, "' lists no files");
  for (auto it = j["files"].begin(); it != j["files"].end(); ++it) {
    const auto& f = it.value();
    NNX_CHECK(!it.key().empty() && it.key().find('/') == std::string::npos && it.key() != "." && it.key() != "..",
              "'", where, "' lists an invalid file name '", it.key(), "'");
    NNX_CHECK(f.is_object() && f.contains("size") && f["size"].is_number_integer() && f["size"].get<int64_t>() >= 0,
              "'", where, "': file '", it.key(), "' has no valid size");
    NNX_CHECK(f.contains("checksum") && f["checksum"].is_string(), "'", where, "': file '", it.key(), "' has no checksum");
    if (f.contains("structure")) check_structure(f["structure"], where, it.key());
  }
  NNX_CHECK(j.contains("items") && j["items"].is_object(), "'", where, "' lists no items");
  for (auto it = j["items"].begin(); it != j["items"].end(); ++it)
    NNX_CHECK(valid_kind(it.value()), "'", where, "': item '", it.key(), "' has kind ", it.value().dump(),
              " (expected \"state\", \"json\" or a registered handler's kind: letters, digits, '_', '-', '.')");
  NNX_CHECK(!j.contains("step") || j["step"].is_number_integer(), "'", where, "': step is not an integer");
  NNX_CHECK(!j.contains("world_size") || (j["world_size"].is_number_integer() && j["world_size"].get<int64_t>() >= 1),
            "'", where, "': world_size is not a positive integer");
  NNX_CHECK(!j.contains("metrics") || j["metrics"].is_null() || j["metrics"].is_object(), "'", where,
            "': metrics is not an object");
  return j;
}

}  // namespace nnx::checkpoint
