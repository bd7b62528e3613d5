#include "nnx/checkpoint/format/h5_file.h"

#include <algorithm>
#include <exception>

#include "nnx/checkpoint/format/h5_handles.h"
#include "nnx/checkpoint/io/direct_writer.h"
#include "nnx/framework/error.h"

namespace nnx::checkpoint {

using h5::Hid;
using h5::silence_hdf5;

size_t H5File::meta_block_size(int64_t state_bytes) {
  size_t block = 4 << 10;
  while (block < (256 << 10) && static_cast<int64_t>(block) * 64 < state_bytes) block <<= 1;
  return block;
}

H5File H5File::create(const std::string& path, size_t meta_block_bytes) {
  silence_hdf5();
  Hid fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  // v1.8+ object headers carry checksums of HDF5's own metadata.
  H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_LATEST);
  // Closing the file closes everything in it, also after a failed write (full disk).
  H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG);
  // Data of 64 KiB and more starts on a 4 KiB boundary, so reads copy whole pages of the page
  // cache into 64-byte aligned tensors; the padding costs under 4 KiB per large dataset.
  H5Pset_alignment(fapl, 64 << 10, 4096);
  // HDF5's own metadata (object headers, attributes, group links) is allocated from blocks of
  // up to 256 KiB instead of 2 KiB, so it sits in a few contiguous runs instead of beside every
  // dataset: the structure check before a restore, and HDF5's own reads of it after, read a
  // few runs instead of one small piece per dataset (on a cold file, a disk request each).
  H5Pset_meta_block_size(fapl, meta_block_bytes);
  hid_t id = H5Fcreate(path.c_str(), H5F_ACC_EXCL, H5P_DEFAULT, fapl);
  NNX_CHECK_IO(id >= 0, "cannot create HDF5 file '", path, "'");
  return H5File(id, path);
}

H5File H5File::open(const std::string& path) {
  silence_hdf5();
  hid_t id = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  NNX_CHECK(id >= 0, "cannot open '", path, "' as HDF5 (missing, truncated or not a checkpoint)");
  return H5File(id, path);
}

H5File H5File::open_image(const void* data, size_t size, const std::string& name) {
  silence_hdf5();
  NNX_CHECK(size > 0, "'", name, "' is empty, not HDF5");
  Hid fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  NNX_CHECK(H5Pset_fapl_core(fapl, 64 << 10, /*backing_store=*/0) >= 0 &&
                H5Pset_file_image(fapl, const_cast<void*>(data), size) >= 0,
            "cannot hand the image '", name, "' to HDF5");
  hid_t id = H5Fopen(name.c_str(), H5F_ACC_RDONLY, fapl);
  NNX_CHECK(id >= 0, "cannot open the image '", name, "' as HDF5 (truncated or not a checkpoint)");
  return H5File(id, name);
}

H5File::H5File(H5File&& o) noexcept
    : id_(o.id_),
      path_(std::move(o.path_)),
      direct_(std::move(o.direct_)),
      direct_tried_(o.direct_tried_),
      raw_extents_(std::move(o.raw_extents_)) {
  o.id_ = -1;
}
H5File& H5File::operator=(H5File&& o) noexcept {
  if (this != &o) {
    if (id_ >= 0) H5Fclose(id_);
    id_ = o.id_;
    path_ = std::move(o.path_);
    direct_ = std::move(o.direct_);
    direct_tried_ = o.direct_tried_;
    raw_extents_ = std::move(o.raw_extents_);
    o.id_ = -1;
  }
  return *this;
}
H5File::~H5File() {
  if (id_ < 0) return;
  if (direct_) direct_->cancel();  // never committed: its writes are not needed
  H5Fclose(id_);
}

bool H5File::close_hdf5() {
  hid_t id = id_;
  id_ = -1;
  herr_t r1 = H5Fflush(id, H5F_SCOPE_LOCAL);
  herr_t r2 = H5Fclose(id);
  return r1 >= 0 && r2 >= 0;
}

void H5File::check_pending(const io::PendingWrites& pending) const {
  NNX_CHECK(!direct_ || direct_->ranges().empty() || pending.covers(direct_.get()), "'", path_,
            "' is closed without the PendingWrites its write_state returned: its large datasets may not be on disk");
}

void H5File::close(io::PendingWrites pending) {
  silence_hdf5();
  if (id_ < 0) return;
  check_pending(pending);
  const bool closed = close_hdf5();
  pending.wait();  // names the dataset of a failed write
  NNX_CHECK_IO(closed, "cannot flush and close '", path_, "' (disk full?)");
}

std::pair<int64_t, std::string> H5File::commit(io::PendingWrites pending) {
  silence_hdf5();
  NNX_CHECK(id_ >= 0, "cannot commit '", path_, "': it is already closed");
  check_pending(pending);
  if (!direct_ || direct_->ranges().empty()) {
    close(std::move(pending));
    return io::fsync_and_checksum(path_);
  }
  // Closed, the file has its final size (HDF5 extends it to its end of allocation), so it can be
  // hashed while the direct writes go on.
  const bool closed = close_hdf5();
  std::pair<int64_t, std::string> out;
  std::exception_ptr hash_error;
  if (closed) {
    try {
      std::vector<io::MemoryRange> ranges = direct_->ranges();
      std::sort(ranges.begin(), ranges.end(), [](const io::MemoryRange& a, const io::MemoryRange& b) { return a.offset < b.offset; });
      out = io::file_size_and_checksum(path_, ranges);
    } catch (...) {
      hash_error = std::current_exception();
    }
  }
  pending.wait();
  NNX_CHECK_IO(closed, "cannot flush and close '", path_, "' (disk full?)");
  io::fsync_path(path_);
  if (hash_error) std::rethrow_exception(hash_error);
  return out;
}

nlohmann::json H5File::structure() const {
  std::vector<io::ByteRange> skip = raw_extents_;
  std::sort(skip.begin(), skip.end(), [](const io::ByteRange& a, const io::ByteRange& b) { return a.offset < b.offset; });
  const auto sum = io::checksum_outside(path_, skip).second;
  nlohmann::json ranges = nlohmann::json::array();
  for (const auto& r : skip) ranges.push_back({r.offset, r.size});
  return {{"checksum", sum}, {"skip", std::move(ranges)}};
}

std::shared_ptr<io::DirectWriter> H5File::direct_writer() {
  if (id_ < 0) return nullptr;
  if (!direct_tried_) {
    direct_tried_ = true;
    const int fd = h5::sec2_descriptor(id_);
    if (fd >= 0) {
      auto w = std::make_shared<io::DirectWriter>(fd);
      if (w->enabled()) direct_ = std::move(w);
    }
  }
  return direct_;
}

}  // namespace nnx::checkpoint
