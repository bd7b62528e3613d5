#include "nnx/checkpoint/format/directory.h"

#include <system_error>
#include <vector>

#include "nnx/checkpoint/format/metadata.h"
#include "nnx/checkpoint/io/fs.h"
#include "nnx/framework/error.h"

namespace nnx::checkpoint {

namespace stdfs = std::filesystem;

nlohmann::json read_metadata(const stdfs::path& directory) {
  const stdfs::path p = directory / kMetadataFile;
  NNX_CHECK(stdfs::exists(p), "'", directory.string(), "' is not a committed checkpoint (no ", kMetadataFile, ")");
  nlohmann::json j = parse_metadata(io::read_file(p), p.string());
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
    const std::string have = io::file_size_and_checksum(file).second;
    NNX_CHECK(have == want, "checkpoint file '", file.string(), "' is corrupt: checksum ", have, ", ", kMetadataFile,
              " says ", want, "; not opened");
    return;
  }
  std::vector<io::ByteRange> skip;
  for (const auto& r : st->at("skip")) skip.push_back({r.at(0).get<int64_t>(), r.at(1).get<int64_t>()});
  const std::string want = st->at("checksum").get<std::string>();
  const std::string have = io::checksum_outside(file, skip).second;
  NNX_CHECK(have == want, "checkpoint file '", file.string(), "' is corrupt: the checksum of its HDF5 structure is ",
            have, ", ", kMetadataFile, " says ", want, "; not opened");
}
}  // namespace

H5File open_verified(const stdfs::path& directory, const nlohmann::json& meta) {
  for (auto it = meta.at("files").begin(); it != meta.at("files").end(); ++it)
    verify_file_structure(directory / it.key(), it.value());
  return H5File::open((directory / kCheckpointFile).string());
}

}  // namespace nnx::checkpoint
