#include "nnx/checkpoint/format/dataset_reader.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "nnx/checkpoint/format/schema.h"
#include "nnx/checkpoint/io/io_stats.h"
#include "nnx/framework/error.h"

namespace nnx::checkpoint::h5 {

namespace {
void check_sum(const at::Tensor& t, const std::string& expected, const std::string& where, DatasetReads* reads) {
  if (reads) return reads->reader.check(t, expected, where);
  io::check_tensor_checksum(t, expected, where);
}
}  // namespace

namespace {

// The dataspace and stored type must agree with the attributes before any byte is read.
void check_storage(hid_t dset, hid_t ftype, hid_t mtype, const StoredInfo& info, const std::string& where) {
  Hid space(H5Dget_space(dset), H5Sclose);
  const int rank = H5Sget_simple_extent_ndims(space);
  NNX_CHECK(rank == static_cast<int>(info.shape.size()), where, ": dataspace has rank ", rank,
            ", attribute 'shape' has ", info.shape.size());
  std::vector<hsize_t> dims(static_cast<size_t>(std::max(rank, 0)));
  if (rank > 0) H5Sget_simple_extent_dims(space, dims.data(), nullptr);
  for (int i = 0; i < rank; ++i)
    NNX_CHECK(static_cast<int64_t>(dims[i]) == info.shape[i], where, ": dataspace dims differ from attribute 'shape'");
  NNX_CHECK(H5Tget_size(ftype) == H5Tget_size(mtype) && H5Tget_class(ftype) == H5Tget_class(mtype),
            where, ": stored HDF5 type does not match dtype '", info.dtype, "'");
}

// What to read: [lo, hi) along `dim` (the whole dataset when dim < 0).
struct Window {
  int64_t dim = -1, lo = 0, hi = 0;
};

// The window a range needs: a stitched dataset's range widened to whole pieces (so that their
// checksums can be checked); the whole dataset when one checksum covers it.
Window window_of(const StoredInfo& info, const std::optional<Range>& range) {
  Window w;
  if (!range || (range->start == 0 && range->size == info.shape[static_cast<size_t>(range->dim)])) return w;
  w.dim = range->dim;
  if (!info.pieces.empty() && info.piece_dim == w.dim) {
    w.lo = range->start;
    w.hi = range->start + range->size;
    for (const auto& p : info.pieces)
      if (range->size > 0 && p.start < range->start + range->size && p.start + p.size > range->start) {
        w.lo = std::min(w.lo, p.start);
        w.hi = std::max(w.hi, p.start + p.size);
      }
  } else {  // one checksum covers the whole dataset (or pieces along another dim): read it all
    w.hi = info.shape[static_cast<size_t>(w.dim)];
  }
  return w;
}

// A whole, large dataset stored contiguously in this file (no filters, no external or virtual
// storage), or a virtual one over such, in exactly the memory type is read with pread() on the
// reader's jobs while this thread opens the next dataset. False: nothing submitted.
bool read_direct(hid_t dset, hid_t ftype, hid_t mtype, const at::Tensor& t, const StoredInfo& info,
                 const std::string& where, DatasetReads& reads) {
  const int64_t nbytes = t.numel() * t.element_size();
  if (reads.sources.fd() < 0 || nbytes < io::kLargeDataset || H5Tequal(ftype, mtype) <= 0) return false;
  // HADDR_UNDEF for chunked, compact, virtual and external storage; the storage size rules out
  // a contiguous dataset whose space was never allocated (in a file with a userblock
  // H5Dget_offset would then return a wrapped address).
  const haddr_t offset = info.pieces.empty() ? H5Dget_offset(dset) : HADDR_UNDEF;
  if (offset != HADDR_UNDEF && H5Dget_storage_size(dset) == static_cast<hsize_t>(nbytes)) {
    reads.reader.read_at(t, reads.sources.fd(), offset, info.checksum, where);
    return true;
  }
  return offset == HADDR_UNDEF && read_virtual_direct(dset, mtype, t, info, where, reads.sources, reads.reader);
}

// Checks what was read of window `w` in `t`: each stitched piece read, or the whole dataset.
void verify_read(const at::Tensor& t, const StoredInfo& info, const Window& w, const std::string& where,
                 DatasetReads* reads) {
  if (info.pieces.empty()) return check_sum(t, info.checksum, where, reads);
  for (const auto& p : info.pieces) {
    if (w.dim == info.piece_dim && (p.start < w.lo || p.start + p.size > w.hi)) continue;  // not read
    const int64_t origin = w.dim == info.piece_dim ? w.lo : 0;
    check_sum(t.narrow(info.piece_dim, p.start - origin, p.size).contiguous(), p.checksum,
              where + " (piece at " + std::to_string(p.start) + " along dim " + std::to_string(info.piece_dim) + ")", reads);
  }
}

}  // namespace

at::Tensor read_dataset(hid_t dset, const StoredInfo& info, const std::string& where, bool verify,
                        DatasetReads* reads, std::optional<Range> range, bool pinned) {
  const at::ScalarType dt = dtype_from_name(info.dtype);
  Hid ftype(H5Dget_type(dset), H5Tclose);
  Hid mtype = storage_type(dt);
  check_storage(dset, ftype, mtype, info, where);
  if (range && range->size == 0) {  // this rank holds no rows
    std::vector<int64_t> shape = info.shape;
    shape[static_cast<size_t>(range->dim)] = 0;
    return at::empty(shape, at::TensorOptions().dtype(dt));
  }
  const Window w = window_of(info, range);
  std::vector<int64_t> shape = info.shape;
  if (w.dim >= 0) shape[static_cast<size_t>(w.dim)] = w.hi - w.lo;
  at::Tensor t = at::empty(shape, at::TensorOptions().dtype(dt).pinned_memory(pinned));
  if (reads && w.dim < 0 && read_direct(dset, ftype, mtype, t, info, where, *reads)) return t;
  io::count_read(false, t.numel() * t.element_size());
  read_hyperslab(dset, mtype, t, w.dim, w.lo, where);
  if (verify) verify_read(t, info, w, where, reads);
  if (w.dim < 0) return t;
  return t.narrow(w.dim, range->start - w.lo, range->size).clone();
}

}  // namespace nnx::checkpoint::h5
