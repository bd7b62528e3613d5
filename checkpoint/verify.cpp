#include "nnx/checkpoint/verify.h"

#include <ATen/ATen.h>

#include "nnx/checkpoint/format/directory.h"
#include "nnx/checkpoint/format/json_item.h"
#include "nnx/checkpoint/format/state_reader.h"
#include "nnx/checkpoint/io/fs.h"
#include "nnx/checkpoint/shard_planner.h"
#include "nnx/framework/error.h"

namespace nnx::checkpoint {

namespace stdfs = std::filesystem;

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
    auto [size, sum] = io::file_size_and_checksum(f);
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

}  // namespace nnx::checkpoint
