#include "nnx/checkpoint/format/state_reader.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <unordered_set>

#include "nnx/checkpoint/format/dataset_reader.h"
#include "nnx/checkpoint/format/h5_handles.h"
#include "nnx/checkpoint/format/schema.h"
#include "nnx/checkpoint/format/stored_info.h"
#include "nnx/checkpoint/format/virtual_dataset.h"
#include "nnx/checkpoint/io/parallel_reader.h"
#include "nnx/framework/compat.h"
#include "nnx/framework/error.h"

namespace nnx::checkpoint {

namespace {

using h5::Hid;

std::string where_of(const H5File& f, const std::string& item, const std::string& path) {
  return "'" + f.path() + "' dataset /" + item + "/" + path;
}

std::vector<std::string> stored_paths(const H5File& file, hid_t group, const std::string& item) {
  auto s = h5::read_string_attr(group, schema::kPaths, "'" + file.path() + "' group /" + item);
  NNX_CHECK(s.has_value(), "'", file.path(), "' group /", item, " lacks its '", schema::kPaths, "' attribute");
  auto j = nlohmann::json::parse(*s, nullptr, false);
  NNX_CHECK(!j.is_discarded() && j.is_array(), "'", file.path(), "' group /", item, " has malformed '", schema::kPaths, "'");
  return j.get<std::vector<std::string>>();
}

Hid open_item(const H5File& file, const std::string& item) {
  NNX_CHECK(H5Lexists(file.id(), ("/" + item).c_str(), H5P_DEFAULT) > 0, "'", file.path(), "' has no item '", item, "'");
  Hid group(H5Gopen2(file.id(), ("/" + item).c_str(), H5P_DEFAULT), H5Gclose);
  NNX_CHECK(group.ok(), "cannot open item '", item, "' in '", file.path(), "'");
  return group;
}

// Where a restored variable goes: ReadOptions::device, else the template's (CPU for meta).
c10::Device target_device(const VariableState& tv, const ReadOptions& options) {
  if (options.device) return *options.device;
  return tv.value.is_meta() ? c10::Device(c10::kCPU) : tv.value.device();
}

// One template variable's read, validated and planned; its bytes may still be on their way.
VariableState read_variable(const H5File& file, hid_t group, const std::string& item, const std::string& path,
                            const VariableState& tv, bool listed, const ReadOptions& options, const ReadPlanner& planner,
                            h5::DatasetReads& reads) {
  const std::string where = where_of(file, item, path);
  Hid dset(listed ? H5Dopen2(group, path.c_str(), H5P_DEFAULT) : -1, H5Dclose);
  // Missing (not listed, or listed but absent) vs present but unreadable (a corrupt header).
  NNX_CHECK(dset.ok() || (listed && h5::link_exists(group, path)), "checkpoint '", file.path(), "' item '", item,
            "' has no '", path, "' (template expects ", format_shape(tv.value.sizes()), " ",
            dtype_name(tv.value.scalar_type()), ")");
  NNX_CHECK(dset.ok(), "cannot open ", where, " (corrupt object header?)");
  h5::StoredInfo info = h5::read_info(dset, where);
  const std::optional<Range> range = planner.plan(path, tv, info.shape, where);
  const at::ScalarType want = tv.value.scalar_type(), have = dtype_from_name(info.dtype);
  NNX_CHECK(have == want || options.cast, "dtype mismatch at '", path, "': checkpoint ", info.dtype, ", template ",
            dtype_name(want), " (", where, "; pass cast=true to convert)");
  // Bytes bound for a device land in pinned memory: the copy to the device is then asynchronous.
  const bool pinned = !target_device(tv, options).is_cpu();
  at::Tensor t = h5::read_dataset(dset, info, where, options.verify_checksums, &reads, range, pinned);
  return VariableState{Kind::from_name(info.kind), t, planner.restored_metadata(tv, std::move(info.metadata))};
}

// After every byte is verified: the template's device, then its dtype (a cast runs there).
// Pinned host tensors go to the device without blocking, in order on the current stream; the
// host waits once at the end, so a restored tensor is usable on any stream.
void convert_like_template(State& out, const State& templ, const ReadOptions& options) {
  std::vector<c10::Device> devices;
  for (auto& [path, vs] : out) {
    const auto& tv = templ.at(path);
    const c10::Device dev = target_device(tv, options);
    if (!dev.is_cpu()) {
      vs.value = vs.value.to(dev, /*non_blocking=*/vs.value.is_pinned());
      if (std::find(devices.begin(), devices.end(), dev) == devices.end()) devices.push_back(dev);
    }
    if (vs.value.scalar_type() != tv.value.scalar_type()) vs.value = vs.value.to(tv.value.scalar_type());
  }
  for (const auto& d : devices) compat::synchronize_stream(compat::current_stream(d));
}

// Paths stored but absent from the template are an error unless allowed or filtered out.
void check_no_extra(const H5File& file, hid_t group, const std::string& item, const std::vector<std::string>& in_file,
                    const State& templ, const ReadOptions& options) {
  if (options.allow_extra) return;
  for (const auto& p : in_file) {
    if (templ.contains(p)) continue;
    // Partial restores ignore what their filter excludes; the kind is read for the filter.
    Hid dset(H5Dopen2(group, p.c_str(), H5P_DEFAULT), H5Dclose);
    auto kind = dset.ok() ? h5::read_string_attr(dset, schema::kKind, p) : std::nullopt;
    bool selected = !kind || options.filter(p, Kind::define(*kind));
    NNX_CHECK(!selected, "checkpoint '", file.path(), "' item '", item, "' has '", p,
              "' which the template lacks (unexpected path; restore with allow_extra to ignore it)");
  }
}

}  // namespace

State read_item_state(const H5File& file, const std::string& item, const State& templ, const ReadOptions& options,
                      const ReadPlanner& planner) {
  h5::silence_hdf5();
  Hid group = open_item(file, item);
  const auto in_file = stored_paths(file, group, item);
  const std::unordered_set<std::string> file_set(in_file.begin(), in_file.end());
  State out;
  h5::SourceFiles sources(file);                     // before the reader: its jobs read them
  io::ParallelReader reader(options.verify_checksums);
  h5::DatasetReads reads{sources, reader};
  for (const auto& [path, tv] : templ) {
    if (!options.filter(path, tv.kind)) continue;
    out.insert(path, read_variable(file, group, item, path, tv, file_set.count(path) > 0, options, planner, reads));
  }
  reader.finish();  // every byte read and every checksum checked before any conversion or copy
  convert_like_template(out, templ, options);
  check_no_extra(file, group, item, in_file, templ, options);
  return out;
}

State read_state_untemplated(const H5File& file, const std::string& item, bool verify) {
  h5::silence_hdf5();
  Hid group = open_item(file, item);
  State out;
  for (const auto& path : stored_paths(file, group, item)) {
    const std::string where = where_of(file, item, path);
    NNX_CHECK(h5::link_exists(group, path), where, " is listed but missing");
    Hid dset(H5Dopen2(group, path.c_str(), H5P_DEFAULT), H5Dclose);
    NNX_CHECK(dset.ok(), "cannot open ", where);
    h5::StoredInfo info = h5::read_info(dset, where);
    out.insert(path, VariableState{Kind::define(info.kind), h5::read_dataset(dset, info, where, verify), info.metadata});
  }
  return out;
}

std::vector<DatasetInfo> list_item(const H5File& file, const std::string& item) {
  h5::silence_hdf5();
  Hid group = open_item(file, item);
  std::vector<DatasetInfo> out;
  for (const auto& path : stored_paths(file, group, item)) {
    const std::string where = where_of(file, item, path);
    NNX_CHECK(h5::link_exists(group, path), where, " is listed but missing");
    Hid dset(H5Dopen2(group, path.c_str(), H5P_DEFAULT), H5Dclose);
    h5::StoredInfo info = h5::read_info(dset, where);
    int64_t n = 1;
    for (auto s : info.shape) n *= s;
    out.push_back({path, info.kind, info.dtype, info.shape, info.sharding, info.checksum,
                   n * static_cast<int64_t>(c10::elementSize(dtype_from_name(info.dtype)))});
  }
  return out;
}

std::vector<std::string> list_items(const H5File& file) {
  h5::silence_hdf5();
  std::vector<std::string> out;
  for (auto& n : h5::group_children(file.id()))
    if (n != schema::kJsonGroup) out.push_back(n);
  return out;
}

}  // namespace nnx::checkpoint
