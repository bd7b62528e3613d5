#include "nnx/checkpoint/format/h5_handles.h"

#include <algorithm>
#include <cstring>
#include <mutex>

#include "nnx/framework/error.h"

namespace nnx::checkpoint::h5 {

void silence_hdf5() {
  static std::once_flag once;
  std::call_once(once, [] {
    // HDF5 1.10 crashes in its atexit handler on a file whose close failed (a full disk);
    // the OS reclaims everything at exit anyway.
    H5dont_atexit();
  });
  thread_local bool silenced = false;
  if (!silenced) {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    silenced = true;
  }
}


Hid& Hid::operator=(Hid&& o) noexcept {
  if (this != &o) {
    if (id >= 0 && close) close(id);
    id = o.id;
    close = o.close;
    o.id = -1;
  }
  return *this;
}

Hid::~Hid() {
  if (id >= 0 && close) close(id);
}

int sec2_descriptor(hid_t file) {
  Hid fapl(H5Fget_access_plist(file), H5Pclose);
  void* handle = nullptr;
  if (!fapl.ok() || H5Pget_driver(fapl) != H5FD_SEC2 || H5Fget_vfd_handle(file, fapl, &handle) < 0 || !handle) return -1;
  return *static_cast<int*>(handle);
}

namespace {
hid_t float16_type() {
  // IEEE half precision as h5py defines it: 1 sign, 5 exponent (bias 15), 10 mantissa bits.
  hid_t t = H5Tcopy(H5T_IEEE_F32LE);
  H5Tset_fields(t, 15, 10, 5, 0, 10);
  H5Tset_size(t, 2);
  H5Tset_ebias(t, 15);
  return t;
}
}  // namespace

Hid storage_type(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return Hid(H5Tcopy(H5T_IEEE_F64LE), H5Tclose);
    case at::kFloat: return Hid(H5Tcopy(H5T_IEEE_F32LE), H5Tclose);
    case at::kHalf: return Hid(float16_type(), H5Tclose);
    case at::kBFloat16: return Hid(H5Tcopy(H5T_STD_U16LE), H5Tclose);
    case at::kLong: return Hid(H5Tcopy(H5T_STD_I64LE), H5Tclose);
    case at::kInt: return Hid(H5Tcopy(H5T_STD_I32LE), H5Tclose);
    case at::kShort: return Hid(H5Tcopy(H5T_STD_I16LE), H5Tclose);
    case at::kChar: return Hid(H5Tcopy(H5T_STD_I8LE), H5Tclose);
    case at::kByte: return Hid(H5Tcopy(H5T_STD_U8LE), H5Tclose);
    case at::kBool: return Hid(H5Tcopy(H5T_STD_U8LE), H5Tclose);
    default: NNX_CHECK(false, "dtype ", t, " cannot be checkpointed");
  }
  return {};
}

Hid vlen_string_type() {
  hid_t t = H5Tcopy(H5T_C_S1);
  H5Tset_size(t, H5T_VARIABLE);
  H5Tset_cset(t, H5T_CSET_UTF8);
  return Hid(t, H5Tclose);
}

void write_string_attr(hid_t obj, const char* name, const std::string& value, const std::string& where) {
  Hid type = vlen_string_type();
  Hid space(H5Screate(H5S_SCALAR), H5Sclose);
  Hid attr(H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  NNX_CHECK_IO(attr.ok(), "cannot create attribute '", name, "' on ", where);
  const char* p = value.c_str();
  NNX_CHECK_IO(H5Awrite(attr, type, &p) >= 0, "cannot write attribute '", name, "' on ", where);
}

bool holds_one_element(hid_t space) {
  return space >= 0 && H5Sget_simple_extent_npoints(space) == 1;
}

// Reads a string attribute that exists. Its dataspace is checked first: H5Aread writes one
// string per element, and a damaged file's dataspace can claim billions (seen in fuzzing:
// HDF5 read vlen strings from a corrupt global heap for minutes, into a one-pointer buffer).
std::string read_present_string_attr(hid_t obj, const char* name, const std::string& where) {
  Hid attr(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
  NNX_CHECK(attr.ok(), "cannot open attribute '", name, "' of ", where);
  Hid space(H5Aget_space(attr), H5Sclose);
  NNX_CHECK(holds_one_element(space), "attribute '", name, "' of ", where, " is not a single string (malformed)");
  Hid ftype(H5Aget_type(attr), H5Tclose);
  NNX_CHECK(H5Tget_class(ftype) == H5T_STRING, "attribute '", name, "' of ", where, " is not a string");
  Hid type = vlen_string_type();
  if (H5Tis_variable_str(ftype) > 0) {
    char* p = nullptr;
    NNX_CHECK(H5Aread(attr, type, &p) >= 0, "cannot read attribute '", name, "' of ", where);
    std::string out = p ? p : "";
    if (p) H5free_memory(p);
    return out;
  }
  size_t n = H5Tget_size(ftype);
  std::string out(n, '\0');
  NNX_CHECK(H5Aread(attr, ftype, out.data()) >= 0, "cannot read attribute '", name, "' of ", where);
  out.resize(strnlen(out.data(), n));
  return out;
}

std::optional<std::string> read_string_attr(hid_t obj, const char* name, const std::string& where) {
  if (H5Aexists(obj, name) <= 0) return std::nullopt;
  return read_present_string_attr(obj, name, where);
}

// The names of an object's attributes, from one pass over its header (cheaper than one
// H5Aexists per name when several are read).
std::unordered_set<std::string> attribute_names(hid_t obj, const std::string& where) {
  std::unordered_set<std::string> names;
  auto add = [](hid_t, const char* name, const H5A_info_t*, void* out) -> herr_t {
    static_cast<std::unordered_set<std::string>*>(out)->insert(name);
    return 0;
  };
  NNX_CHECK(H5Aiterate2(obj, H5_INDEX_NAME, H5_ITER_NATIVE, nullptr, add, &names) >= 0,
            "cannot list the attributes of ", where);
  return names;
}

void write_i64_array_attr(hid_t obj, const char* name, const std::vector<int64_t>& v, const std::string& where) {
  hsize_t n = v.size();
  Hid space(H5Screate_simple(1, &n, nullptr), H5Sclose);  // n = 0: an empty array (rank 0)
  Hid attr(H5Acreate2(obj, name, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  NNX_CHECK_IO(attr.ok(), "cannot create attribute '", name, "' on ", where);
  if (n > 0) NNX_CHECK_IO(H5Awrite(attr, H5T_NATIVE_INT64, v.data()) >= 0, "cannot write attribute '", name, "' on ", where);
}

std::optional<std::vector<int64_t>> read_i64_array_attr(hid_t obj, const char* name, const std::string& where,
                                                       bool known_present) {
  if (!known_present && H5Aexists(obj, name) <= 0) return std::nullopt;
  Hid attr(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
  Hid space(H5Aget_space(attr), H5Sclose);
  hssize_t n = H5Sget_simple_extent_npoints(space);
  NNX_CHECK(n >= 0 && n <= 64, "attribute '", name, "' of ", where, " is malformed");
  std::vector<int64_t> v(static_cast<size_t>(n));
  if (n > 0) NNX_CHECK(H5Aread(attr, H5T_NATIVE_INT64, v.data()) >= 0, "cannot read attribute '", name, "' of ", where);
  return v;
}


bool link_exists(hid_t loc, const std::string& path) {
  // H5Lexists fails on missing intermediate groups; check each prefix.
  size_t pos = 0;
  while (true) {
    pos = path.find('/', pos + 1);
    std::string prefix = path.substr(0, pos);
    if (H5Lexists(loc, prefix.c_str(), H5P_DEFAULT) <= 0) return false;
    if (pos == std::string::npos) return true;
  }
}

namespace {
// Rows per slab so one I/O call moves at most max_bytes.
int64_t rows_per_slab(const at::Tensor& t, int64_t max_bytes) {
  int64_t row_bytes = t.dim() == 0 ? t.element_size() : t.numel() / std::max<int64_t>(t.size(0), 1) * t.element_size();
  return std::max<int64_t>(1, max_bytes / std::max<int64_t>(row_bytes, 1));
}
}  // namespace

void dataset_io(bool write, hid_t dset, hid_t type, const at::Tensor& t, int64_t max_bytes, const std::string& where) {
  const int64_t nbytes = t.numel() * t.element_size();
  if (nbytes == 0) return;
  void* base = t.data_ptr();
  if (t.dim() == 0 || nbytes <= max_bytes) {
    herr_t r = write ? H5Dwrite(dset, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, base)
                     : H5Dread(dset, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, base);
    if (write) NNX_CHECK_IO(r >= 0, "cannot write ", where, " (", nbytes, " bytes; disk full?)");
    else NNX_CHECK(r >= 0, "cannot read ", where, " (file truncated or corrupt?)");
    return;
  }
  const int64_t rows = t.size(0), per = rows_per_slab(t, max_bytes);
  const int64_t row_bytes = nbytes / rows;
  std::vector<hsize_t> dims(t.sizes().begin(), t.sizes().end());
  Hid fspace(H5Dget_space(dset), H5Sclose);
  for (int64_t r0 = 0; r0 < rows; r0 += per) {
    int64_t r1 = std::min(rows, r0 + per);
    std::vector<hsize_t> start(dims.size(), 0), count = dims;
    start[0] = static_cast<hsize_t>(r0);
    count[0] = static_cast<hsize_t>(r1 - r0);
    H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr);
    Hid mspace(H5Screate_simple(static_cast<int>(count.size()), count.data(), nullptr), H5Sclose);
    char* p = static_cast<char*>(base) + r0 * row_bytes;
    herr_t r = write ? H5Dwrite(dset, type, mspace, fspace, H5P_DEFAULT, p)
                     : H5Dread(dset, type, mspace, fspace, H5P_DEFAULT, p);
    if (write) NNX_CHECK_IO(r >= 0, "cannot write rows [", r0, ", ", r1, ") of ", where, " (disk full?)");
    else NNX_CHECK(r >= 0, "cannot read rows [", r0, ", ", r1, ") of ", where, " (file truncated or corrupt?)");
  }
}

Hid dataspace(const std::vector<int64_t>& shape) {
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  return Hid(shape.empty() ? H5Screate(H5S_SCALAR) : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr),
             H5Sclose);
}

std::vector<std::string> group_children(hid_t loc) {
  std::vector<std::string> names;
  H5Literate(loc, H5_INDEX_NAME, H5_ITER_INC, nullptr,
             [](hid_t, const char* name, const H5L_info_t*, void* data) -> herr_t {
               static_cast<std::vector<std::string>*>(data)->push_back(name);
               return 0;
             },
             &names);
  return names;
}

// Reads into `t` (contiguous) the hyperslab of `dset` that starts at `lo` along `dim` (dim < 0:
// the whole dataset) and has t's shape, in calls of at most 1 GiB along dim 0.
void read_hyperslab(hid_t dset, hid_t mtype, const at::Tensor& t, int64_t dim, int64_t lo, const std::string& where) {
  if (dim < 0) return dataset_io(false, dset, mtype, t, int64_t(1) << 30, where);
  const int64_t nbytes = t.numel() * t.element_size();
  if (nbytes == 0) return;
  const int64_t rows = t.size(0), per = rows_per_slab(t, int64_t(1) << 30), row_bytes = nbytes / rows;
  Hid fspace(H5Dget_space(dset), H5Sclose);
  for (int64_t r0 = 0; r0 < rows; r0 += per) {
    const int64_t r1 = std::min(rows, r0 + per);
    std::vector<hsize_t> start(static_cast<size_t>(t.dim()), 0), count(t.sizes().begin(), t.sizes().end());
    start[static_cast<size_t>(dim)] = static_cast<hsize_t>(lo);
    start[0] += static_cast<hsize_t>(r0);
    count[0] = static_cast<hsize_t>(r1 - r0);
    H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr);
    Hid mspace(H5Screate_simple(static_cast<int>(count.size()), count.data(), nullptr), H5Sclose);
    NNX_CHECK(H5Dread(dset, mtype, mspace, fspace, H5P_DEFAULT, static_cast<char*>(t.data_ptr()) + r0 * row_bytes) >= 0,
              "cannot read ", where, " (file truncated or corrupt?)");
  }
}

}  // namespace nnx::checkpoint::h5
