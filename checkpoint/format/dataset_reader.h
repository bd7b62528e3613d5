// Reading one tensor dataset (or a range of it), verified. Private to checkpoint/format.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>

#include "nnx/checkpoint/format/range.h"
#include "nnx/checkpoint/format/stored_info.h"
#include "nnx/checkpoint/format/virtual_dataset.h"
#include "nnx/checkpoint/io/parallel_reader.h"

namespace nnx::checkpoint::h5 {

/// The parallel reads of one read_state: the reader jobs and the virtual datasets' sources.
struct DatasetReads {
  SourceFiles& sources;
  io::ParallelReader& reader;
};

/// Reads a dataset described by `info`, or with `range` only those elements. The dataspace and
/// stored type must agree with the attributes before any byte is read. Every byte read is
/// verified (when `verify`): against the dataset's checksum, or for a stitched dataset against
/// each piece read (a range is widened to whole pieces so that their checksums can be checked).
/// With `reads`, a large contiguous dataset (or virtual dataset over such) is read with pread()
/// on reader jobs and may be verified there: use the tensor only after reads->reader.finish().
/// `pinned`: the host tensor is page-locked (for an asynchronous copy to a device; a CUDA build
/// only). Throws nnx::Error naming `where`.
at::Tensor read_dataset(hid_t dset, const StoredInfo& info, const std::string& where, bool verify,
                        DatasetReads* reads = nullptr, std::optional<Range> range = std::nullopt, bool pinned = false);

}  // namespace nnx::checkpoint::h5
