// Virtual datasets: stitching the ranks' pieces into global arrays, and reading them back.
// Private to checkpoint/format.
#pragma once

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <map>
#include <string>
#include <vector>

#include "nnx/checkpoint/format/h5_file.h"
#include "nnx/checkpoint/format/h5_handles.h"
#include "nnx/checkpoint/format/state_writer.h"
#include "nnx/checkpoint/format/stored_info.h"
#include "nnx/checkpoint/io/parallel_reader.h"

namespace nnx::checkpoint::h5 {

/// The global shape of `src`: its pieces concatenated along src.dim (one piece: that piece's
/// shape). Throws nnx::Error naming `where` and both shards when other dimensions disagree.
std::vector<int64_t> stitched_shape(const VirtualSource& src, const std::string& where);

/// Creates /<item>/<path> in `group` as a virtual dataset of `type` and global `shape` over the
/// pieces of `src`. Returns it and the `pieces` attribute's list ({"file", "start", "size",
/// "checksum"}, pieces of size 0 omitted). Throws nnx::IOError naming `where`.
std::pair<Hid, nlohmann::json> create_virtual(hid_t group, hid_t lcpl, const std::string& item, const std::string& path,
                                              hid_t type, const std::vector<int64_t>& shape, const VirtualSource& src,
                                              const std::string& where);

/// The source files of the virtual datasets one read opens: each opened once and kept open
/// until destruction (declare it before the reader whose jobs read them).
class SourceFiles {
 public:
  /// `file`: the referring file (names are relative to its directory; "." is itself).
  explicit SourceFiles(const H5File& file);
  struct Source {
    hid_t file = -1;
    int fd = -1;  ///< -1 when not on the sec2 driver: read through H5Dread instead
  };
  /// The source named `name`; {-1, -1} when it cannot be opened.
  Source get(const std::string& name);
  /// The referring file's descriptor (sec2 driver), or -1.
  int fd() const { return fd_; }

 private:
  hid_t file_id_;
  std::string dir_;
  int fd_;
  std::map<std::string, H5File> files_;
};

/// A virtual dataset whose mappings are whole row blocks of contiguous source datasets in
/// exactly the memory type `mtype` is read piece by piece with pread() from the source files,
/// each piece verified against its checksum (the dataset's own for a single piece, the `pieces`
/// entry for a dim-0 stitched one). Returns false, having submitted nothing, when any mapping
/// does not qualify; the caller then uses H5Dread.
bool read_virtual_direct(hid_t dset, hid_t mtype, const at::Tensor& t, const StoredInfo& info, const std::string& where,
                         SourceFiles& sources, io::ParallelReader& reader);

}  // namespace nnx::checkpoint::h5
