// HDF5 C API helpers of the format layer: RAII handles, attributes, types, slab I/O.
// Private to checkpoint/format (it includes <hdf5.h>).
#pragma once

#include <ATen/core/Tensor.h>
#include <hdf5.h>

#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

namespace nnx::checkpoint::h5 {

/// HDF5's error stacks (HDF5-DIAG lines) never reach the user: our errors name the file and the
/// dataset in one line. A thread-safe HDF5 (Debian's) keeps the printing switch per thread, so
/// every thread that calls HDF5 turns it off for itself, at each entry point of the format.
void silence_hdf5();

/// RAII for any hid_t.
struct Hid {
  hid_t id = -1;
  herr_t (*close)(hid_t) = nullptr;
  Hid() = default;
  Hid(hid_t i, herr_t (*c)(hid_t)) : id(i), close(c) {}
  Hid(const Hid&) = delete;
  Hid& operator=(const Hid&) = delete;
  Hid(Hid&& o) noexcept : id(o.id), close(o.close) { o.id = -1; }
  Hid& operator=(Hid&& o) noexcept;
  ~Hid();
  operator hid_t() const { return id; }
  bool ok() const { return id >= 0; }
};

/// The file descriptor of an open HDF5 file on the sec2 driver (HDF5's own; valid while the
/// file is open), or -1 for any other driver.
int sec2_descriptor(hid_t file);
/// The HDF5 type a tensor of `t` is stored as (schema.h's dtype vocabulary); throws nnx::Error
/// for a dtype that cannot be checkpointed.
Hid storage_type(at::ScalarType t);
/// A variable-length UTF-8 string type.
Hid vlen_string_type();
/// A dataspace of `shape` (scalar for an empty shape).
Hid dataspace(const std::vector<int64_t>& shape);
/// Whether `space` is valid and holds exactly one element (scalar, or one point): what a
/// single string must have before H5Aread/H5Dread write one pointer for each element.
bool holds_one_element(hid_t space);

/// Attributes; `where` names the object in errors (nnx::IOError when writing, nnx::Error when
/// reading).
void write_string_attr(hid_t obj, const char* name, const std::string& value, const std::string& where);
std::string read_present_string_attr(hid_t obj, const char* name, const std::string& where);
std::optional<std::string> read_string_attr(hid_t obj, const char* name, const std::string& where);
/// The names of an object's attributes, from one pass over its header.
std::unordered_set<std::string> attribute_names(hid_t obj, const std::string& where);
void write_i64_array_attr(hid_t obj, const char* name, const std::vector<int64_t>& v, const std::string& where);
std::optional<std::vector<int64_t>> read_i64_array_attr(hid_t obj, const char* name, const std::string& where,
                                                       bool known_present = false);

/// Whether `path` (relative to `loc`, possibly nested) exists, checking each prefix.
bool link_exists(hid_t loc, const std::string& path);
/// The names of a group's links, by name.
std::vector<std::string> group_children(hid_t loc);

/// Writes (or reads) contiguous `t` to (from) the whole of `dset`, in slabs of at most
/// `max_bytes` along dim 0. Throws nnx::IOError (write) or nnx::Error (read) naming `where`.
void dataset_io(bool write, hid_t dset, hid_t type, const at::Tensor& t, int64_t max_bytes, const std::string& where);
/// Reads into contiguous `t` the hyperslab of `dset` that starts at `lo` along `dim` (dim < 0:
/// the whole dataset) and has t's shape, in calls of at most 1 GiB along dim 0.
void read_hyperslab(hid_t dset, hid_t mtype, const at::Tensor& t, int64_t dim, int64_t lo, const std::string& where);

}  // namespace nnx::checkpoint::h5
