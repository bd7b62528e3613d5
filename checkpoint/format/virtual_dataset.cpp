#include "nnx/checkpoint/format/virtual_dataset.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <filesystem>
#include <optional>

#include "nnx/framework/error.h"

namespace nnx::checkpoint::h5 {

std::vector<int64_t> stitched_shape(const VirtualSource& src, const std::string& where) {
  NNX_INTERNAL_ASSERT(!src.pieces.empty(), "no source for virtual ", where);
  const int64_t ndim = static_cast<int64_t>(src.pieces[0].shape.size());
  NNX_INTERNAL_ASSERT(ndim >= 1, "virtual datasets need rank >= 1: ", where);
  std::vector<int64_t> shape = src.pieces[0].shape;
  if (src.pieces.size() == 1) return shape;
  NNX_INTERNAL_ASSERT(src.dim >= 0 && src.dim < ndim, "bad concatenation dimension for ", where);
  const auto dim = static_cast<size_t>(src.dim);
  shape[dim] = 0;
  for (const auto& pc : src.pieces) {
    for (size_t d = 0; d < static_cast<size_t>(ndim); ++d)
      NNX_CHECK(pc.shape.size() == static_cast<size_t>(ndim) && (d == dim || pc.shape[d] == shape[d]), "cannot stitch ",
                where, ": shard '", pc.file, "' holds ", format_shape(pc.shape), ", shard '", src.pieces[0].file,
                "' holds ", format_shape(src.pieces[0].shape), " (sharded along dim ", src.dim, ")");
    shape[dim] += pc.shape[dim];
  }
  return shape;
}

std::pair<Hid, nlohmann::json> create_virtual(hid_t group, hid_t lcpl, const std::string& item, const std::string& path,
                                              hid_t type, const std::vector<int64_t>& shape, const VirtualSource& src,
                                              const std::string& where) {
  const size_t ndim = shape.size();
  Hid vspace = dataspace(shape);
  Hid vdcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  H5Pset_obj_track_times(vdcpl, 0);
  nlohmann::json pieces = nlohmann::json::array();
  int64_t start = 0;
  const bool stitched = src.pieces.size() > 1;
  for (const auto& pc : src.pieces) {
    const int64_t extent = stitched ? pc.shape[static_cast<size_t>(src.dim)] : 0;
    if (stitched && extent == 0) continue;
    std::vector<hsize_t> off(ndim, 0), count(pc.shape.begin(), pc.shape.end());
    if (stitched) off[static_cast<size_t>(src.dim)] = static_cast<hsize_t>(start);
    Hid sspace = dataspace(pc.shape);
    H5Sselect_all(sspace);
    H5Sselect_hyperslab(vspace, H5S_SELECT_SET, off.data(), nullptr, count.data(), nullptr);
    NNX_CHECK_IO(H5Pset_virtual(vdcpl, vspace, pc.file.c_str(), ("/" + item + "/" + path).c_str(), sspace) >= 0,
                 "cannot map ", where, " onto ", pc.file);
    pieces.push_back({{"file", pc.file}, {"start", start}, {"size", extent}, {"checksum", pc.checksum}});
    start += extent;
  }
  H5Sselect_all(vspace);
  Hid dset(H5Dcreate2(group, path.c_str(), type, vspace, lcpl, vdcpl, H5P_DEFAULT), H5Dclose);
  NNX_CHECK_IO(dset.ok(), "cannot create virtual ", where);
  return {std::move(dset), std::move(pieces)};
}

SourceFiles::SourceFiles(const H5File& file)
    : file_id_(file.id()), dir_(std::filesystem::path(file.path()).parent_path().string()), fd_(sec2_descriptor(file.id())) {}

SourceFiles::Source SourceFiles::get(const std::string& name) {
  if (name == ".") return {file_id_, fd_};
  auto it = files_.find(name);
  if (it == files_.end()) {
    std::filesystem::path p(name);
    if (p.is_relative()) p = std::filesystem::path(dir_) / p;
    try {
      it = files_.emplace(name, H5File::open(p.string())).first;
    } catch (const Error&) {
      return {};
    }
  }
  return {it->second.id(), sec2_descriptor(it->second.id())};
}

namespace {

// One mapping of a virtual dataset, read with pread(): rows [start, start + rows) of the
// tensor from `offset` in the source file `fd`, checked against `expected`.
struct PieceRead {
  int64_t start = 0, rows = 0;
  int fd = -1;
  haddr_t offset = HADDR_UNDEF;
  std::string expected, where;
};

std::string virtual_name(hid_t dcpl, size_t i, ssize_t (*get)(hid_t, size_t, char*, size_t)) {
  const ssize_t n = get(dcpl, i, nullptr, 0);
  std::string out(n > 0 ? static_cast<size_t>(n) + 1 : 0, '\0');
  if (n > 0) get(dcpl, i, out.data(), out.size());
  out.resize(n > 0 ? static_cast<size_t>(n) : 0);
  return out;
}

// Mapping `i` of `dcpl` as a PieceRead, or nothing when it is not a whole row block of a
// contiguous source dataset in exactly the memory type.
std::optional<PieceRead> plan_piece(hid_t dcpl, size_t i, size_t count, hid_t mtype, const at::Tensor& t,
                                    const StoredInfo& info, const std::string& where, SourceFiles& sources) {
  Hid vspace(H5Pget_virtual_vspace(dcpl, i), H5Sclose);
  if (!vspace.ok() || H5Sget_select_type(vspace) != H5S_SEL_HYPERSLABS || H5Sget_select_hyper_nblocks(vspace) != 1) return {};
  const int nd = H5Sget_simple_extent_ndims(vspace);
  if (nd != t.dim()) return {};
  std::vector<hsize_t> lo(static_cast<size_t>(nd)), hi(static_cast<size_t>(nd));
  if (H5Sget_select_bounds(vspace, lo.data(), hi.data()) < 0) return {};
  for (int d = 1; d < nd; ++d)
    if (lo[d] != 0 || static_cast<int64_t>(hi[d]) + 1 != t.size(d)) return {};  // whole rows only
  const int64_t start = static_cast<int64_t>(lo[0]), n = static_cast<int64_t>(hi[0] - lo[0]) + 1;
  const int64_t row_elems = t.numel() / t.size(0), row_bytes = row_elems * static_cast<int64_t>(t.element_size());
  const std::string file = virtual_name(dcpl, i, H5Pget_virtual_filename), name = virtual_name(dcpl, i, H5Pget_virtual_dsetname);
  const auto src = file.empty() || name.empty() ? SourceFiles::Source{} : sources.get(file);
  if (src.fd < 0) return {};
  Hid sd(H5Dopen2(src.file, name.c_str(), H5P_DEFAULT), H5Dclose);
  if (!sd.ok()) return {};
  Hid stype(H5Dget_type(sd), H5Tclose), sspace(H5Dget_space(sd), H5Sclose);
  const haddr_t offset = H5Dget_offset(sd);
  if (H5Tequal(stype, mtype) <= 0 || offset == HADDR_UNDEF || H5Dget_storage_size(sd) != static_cast<hsize_t>(n * row_bytes) ||
      H5Sget_simple_extent_npoints(sspace) != n * row_elems)
    return {};
  if (info.pieces.empty()) {
    if (count != 1 || start != 0 || n != t.size(0)) return {};
    return PieceRead{start, n, src.fd, offset, info.checksum, where};
  }
  auto p = std::find_if(info.pieces.begin(), info.pieces.end(), [&](const auto& pc) { return pc.start == start && pc.size == n; });
  if (p == info.pieces.end()) return {};
  return PieceRead{start, n, src.fd, offset, p->checksum, where + " (piece at " + std::to_string(start) + " along dim 0)"};
}

}  // namespace

bool read_virtual_direct(hid_t dset, hid_t mtype, const at::Tensor& t, const StoredInfo& info, const std::string& where,
                         SourceFiles& sources, io::ParallelReader& reader) {
  if (t.dim() == 0 || t.size(0) == 0 || (!info.pieces.empty() && info.piece_dim != 0)) return false;
  Hid dcpl(H5Dget_create_plist(dset), H5Pclose);
  size_t count = 0;
  if (!dcpl.ok() || H5Pget_layout(dcpl) != H5D_VIRTUAL || H5Pget_virtual_count(dcpl, &count) < 0 || count == 0) return false;
  std::vector<PieceRead> plans;
  for (size_t i = 0; i < count; ++i) {
    auto plan = plan_piece(dcpl, i, count, mtype, t, info, where, sources);
    if (!plan) return false;
    plans.push_back(std::move(*plan));
  }
  // The pieces must tile the rows exactly.
  std::sort(plans.begin(), plans.end(), [](const PieceRead& a, const PieceRead& b) { return a.start < b.start; });
  int64_t next = 0;
  for (const auto& p : plans) {
    if (p.start != next) return false;
    next += p.rows;
  }
  if (next != t.size(0)) return false;
  for (auto& p : plans) reader.read_at(t.narrow(0, p.start, p.rows), p.fd, p.offset, p.expected, p.where);
  return true;
}

}  // namespace nnx::checkpoint::h5
