#include "nnx/checkpoint/format/state_writer.h"

#include <ATen/ATen.h>
#include <fcntl.h>

#include <nlohmann/json.hpp>

#include "nnx/checkpoint/format/h5_handles.h"
#include "nnx/checkpoint/format/schema.h"
#include "nnx/checkpoint/format/virtual_dataset.h"
#include "nnx/checkpoint/io/direct_writer.h"
#include "nnx/checkpoint/io/io_stats.h"
#include "nnx/checkpoint/io/parallel_reader.h"
#include "nnx/checkpoint/io/staging_buffers.h"
#include "nnx/framework/error.h"

namespace nnx::checkpoint {

namespace {

using h5::Hid;

std::string metadata_json(const Metadata& m) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [k, v] : m) j[k] = v;
  return j.dump();
}

// Writes one item's group: its datasets, then its list of paths.
class ItemWriter {
 public:
  ItemWriter(H5File& f, const std::string& item_name, const WriteOptions& options);
  void write(const std::string& path, const VariableState& vs);
  void write_virtual(const std::string& path, const VariableState& vs, const VirtualSource& src);
  io::PendingWrites finish();

 private:
  void attrs(hid_t dset, const std::string& where, const VariableState& vs, const std::string& dtype,
             const std::vector<int64_t>& shape, const std::string& checksum);
  std::string where(const std::string& path) const { return "'" + file_.path() + "' dataset /" + item_ + "/" + path; }
  H5File& file_;
  std::string item_;
  const WriteOptions& options_;
  Hid lcpl_, gcpl_, dcpl_, dcpl_early_, group_;
  nlohmann::json paths_ = nlohmann::json::array();
  int fd_ = -1;  // the file's descriptor (sec2 driver), to start writeback early
  io::PendingWrites pending_;
};

ItemWriter::ItemWriter(H5File& f, const std::string& item_name, const WriteOptions& options)
    : file_(f), item_(item_name), options_(options), fd_(h5::sec2_descriptor(f.id())) {
  NNX_CHECK(!item_.empty() && item_ != schema::kJsonGroup && item_.find('/') == std::string::npos,
            "invalid checkpoint item name '", item_, "'");
  lcpl_ = Hid(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  H5Pset_create_intermediate_group(lcpl_, 1);
  // No modification times in object headers: the same state gives the same bytes.
  gcpl_ = Hid(H5Pcreate(H5P_GROUP_CREATE), H5Pclose);
  H5Pset_obj_track_times(gcpl_, 0);
  group_ = Hid(H5Gcreate2(file_.id(), ("/" + item_).c_str(), lcpl_, gcpl_, H5P_DEFAULT), H5Gclose);
  NNX_CHECK_IO(group_.ok(), "cannot create group /", item_, " in '", file_.path(), "'");
  dcpl_ = Hid(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  H5Pset_fill_time(dcpl_, H5D_FILL_TIME_NEVER);  // every byte is written; no fill pass
  H5Pset_obj_track_times(dcpl_, 0);
  // The direct write path's datasets: contiguous, their space allocated at creation (so its
  // file offset is known) and never written by HDF5.
  dcpl_early_ = Hid(H5Pcopy(dcpl_), H5Pclose);
  H5Pset_layout(dcpl_early_, H5D_CONTIGUOUS);
  H5Pset_alloc_time(dcpl_early_, H5D_ALLOC_TIME_EARLY);
}

void ItemWriter::attrs(hid_t dset, const std::string& where, const VariableState& vs, const std::string& dtype,
                       const std::vector<int64_t>& shape, const std::string& checksum) {
  h5::write_string_attr(dset, schema::kKind, vs.kind.name(), where);
  h5::write_string_attr(dset, schema::kDtype, dtype, where);
  h5::write_i64_array_attr(dset, schema::kShape, shape, where);
  auto sh = vs.metadata.find("sharding");
  h5::write_string_attr(dset, schema::kSharding, sh == vs.metadata.end() ? "" : sh->second, where);
  h5::write_string_attr(dset, schema::kMetadata, metadata_json(vs.metadata), where);
  h5::write_string_attr(dset, schema::kChecksum, checksum, where);
}

void ItemWriter::write(const std::string& path, const VariableState& vs) {
  const std::string where = this->where(path);
  NNX_CHECK(vs.value.defined() && !vs.value.is_meta(), "cannot save ", where,
            ": the tensor is ", vs.value.defined() ? "abstract (meta)" : "undefined");
  at::Tensor t = vs.value.detach();
  if (!t.device().is_cpu()) t = t.cpu();
  t = t.contiguous();  // a view writes only its own elements
  Hid type = h5::storage_type(t.scalar_type());
  Hid space = h5::dataspace(t.sizes().vec());
  const size_t nbytes = static_cast<size_t>(t.numel() * t.element_size());
  const bool large = static_cast<int64_t>(nbytes) >= io::kLargeDataset;
  // The stored type has the memory's bytes (little-endian; bool and bfloat16 as their bits),
  // so the direct path writes the tensor's bytes as they are. Only the caller's own memory:
  // the direct path keeps what it writes until commit (the file checksum is computed from
  // it), which for a temporary (a CUDA tensor's host copy, a view made contiguous) would hold
  // a host copy of the whole state; those go through H5Dwrite.
  auto direct = options_.direct_io && large && t.is_alias_of(vs.value) ? file_.direct_writer() : nullptr;
  Hid dset(H5Dcreate2(group_, path.c_str(), type, space, lcpl_, direct ? dcpl_early_ : dcpl_, H5P_DEFAULT), H5Dclose);
  NNX_CHECK_IO(dset.ok(), "cannot create ", where);
  const haddr_t offset = large ? H5Dget_offset(dset) : HADDR_UNDEF;
  const bool written_directly = direct && offset != HADDR_UNDEF && offset % io::kPage == 0;
  std::string checksum;
  if (written_directly) {
    checksum = direct->write(t, offset, where);
    pending_.merge(io::PendingWrites(direct));
  } else {
    checksum = io::checksum_bytes(nbytes ? t.data_ptr() : nullptr, nbytes);
    h5::dataset_io(true, dset, type, t, options_.max_write_bytes, where);
    // Start writing a large dataset's pages to disk now (sync_file_range only queues them),
    // so the disk works while the next tensors are copied; the commit's fsync waits for them.
    if (fd_ >= 0 && offset != HADDR_UNDEF)
      ::sync_file_range(fd_, static_cast<off64_t>(offset), static_cast<off64_t>(nbytes), SYNC_FILE_RANGE_WRITE);
  }
  io::count_write(written_directly, static_cast<int64_t>(nbytes));
  // Raw data only, checked by the dataset's own checksum: the structure checksum skips it.
  const haddr_t at = offset != HADDR_UNDEF || !large ? offset : H5Dget_offset(dset);
  if (at != HADDR_UNDEF) file_.note_raw_extent(static_cast<int64_t>(at), static_cast<int64_t>(nbytes));
  attrs(dset, where, vs, dtype_name(t.scalar_type()), t.sizes().vec(), checksum);
  paths_.push_back(path);
}

void ItemWriter::write_virtual(const std::string& path, const VariableState& vs, const VirtualSource& src) {
  const std::string where = this->where(path);
  const std::vector<int64_t> shape = h5::stitched_shape(src, where);
  int64_t numel = 1;
  for (auto x : shape) numel *= x;
  if (numel == 0) {  // nothing to map: an empty dataset of the global shape
    VariableState empty = vs;
    empty.value = at::empty(shape, vs.value.options().device(at::kCPU));
    return write(path, empty);
  }
  Hid type = h5::storage_type(vs.value.scalar_type());
  auto [dset, pieces] = h5::create_virtual(group_, lcpl_, item_, path, type, shape, src, where);
  const bool stitched = src.pieces.size() > 1;
  attrs(dset, where, vs, dtype_name(vs.value.scalar_type()), shape, stitched ? std::string() : src.pieces[0].checksum);
  if (stitched)
    h5::write_string_attr(dset, schema::kPieces, nlohmann::json{{"dim", src.dim}, {"pieces", pieces}}.dump(), where);
  paths_.push_back(path);
}

io::PendingWrites ItemWriter::finish() {
  h5::write_string_attr(group_, schema::kPaths, paths_.dump(), "'" + file_.path() + "' group /" + item_);
  return std::move(pending_);
}

}  // namespace

io::PendingWrites write_state(H5File& file, const std::string& item, const State& state, const WriteOptions& options) {
  h5::silence_hdf5();
  ItemWriter w(file, item, options);
  for (const auto& [path, vs] : state) w.write(path, vs);
  return w.finish();
}

io::PendingWrites write_state_virtual(H5File& file, const std::string& item, const State& state,
                                      const std::map<std::string, VirtualSource>& sources, const WriteOptions& options) {
  h5::silence_hdf5();
  ItemWriter w(file, item, options);
  for (const auto& [path, vs] : state) {
    auto it = sources.find(path);
    if (it == sources.end()) w.write(path, vs);
    else w.write_virtual(path, vs, it->second);
  }
  return w.finish();
}

}  // namespace nnx::checkpoint
