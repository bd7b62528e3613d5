#include "nnx/checkpoint/format/json_item.h"

#include "nnx/checkpoint/format/h5_handles.h"
#include "nnx/checkpoint/format/schema.h"
#include "nnx/checkpoint/io/checksum.h"
#include "nnx/framework/error.h"

namespace nnx::checkpoint {

std::vector<std::string> list_json_items(const H5File& file) {
  h5::silence_hdf5();
  const std::string group = "/" + std::string(schema::kJsonGroup);
  if (H5Lexists(file.id(), group.c_str(), H5P_DEFAULT) <= 0) return {};
  h5::Hid g(H5Gopen2(file.id(), group.c_str(), H5P_DEFAULT), H5Gclose);
  return h5::group_children(g);
}

void write_json(H5File& file, const std::string& item, const nlohmann::json& value) {
  h5::silence_hdf5();
  h5::Hid lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  H5Pset_create_intermediate_group(lcpl, 1);
  h5::Hid type = h5::vlen_string_type();
  h5::Hid space(H5Screate(H5S_SCALAR), H5Sclose);
  const std::string name = "/" + std::string(schema::kJsonGroup) + "/" + item;
  h5::Hid dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  H5Pset_obj_track_times(dcpl, 0);
  h5::Hid dset(H5Dcreate2(file.id(), name.c_str(), type, space, lcpl, dcpl, H5P_DEFAULT), H5Dclose);
  NNX_CHECK_IO(dset.ok(), "cannot create ", name, " in '", file.path(), "'");
  std::string s = value.dump();
  const char* p = s.c_str();
  NNX_CHECK_IO(H5Dwrite(dset, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, &p) >= 0, "cannot write ", name,
               " in '", file.path(), "'");
  h5::write_string_attr(dset, schema::kChecksum, io::checksum_bytes(s.data(), s.size()), name);
}

nlohmann::json read_json(const H5File& file, const std::string& item) {
  h5::silence_hdf5();
  const std::string name = "/" + std::string(schema::kJsonGroup) + "/" + item;
  NNX_CHECK(h5::link_exists(file.id(), name.substr(1)), "'", file.path(), "' has no JSON item '", item, "'");
  h5::Hid dset(H5Dopen2(file.id(), name.c_str(), H5P_DEFAULT), H5Dclose);
  NNX_CHECK(dset.ok(), "cannot open ", name, " in '", file.path(), "'");
  h5::Hid space(H5Dget_space(dset), H5Sclose);
  // One string: H5Dread writes one pointer per element the (possibly damaged) dataspace claims.
  NNX_CHECK(h5::holds_one_element(space), "'", file.path(), "' ", name, " is not a single string (malformed)");
  h5::Hid ftype(H5Dget_type(dset), H5Tclose);
  NNX_CHECK(H5Tget_class(ftype) == H5T_STRING && H5Tis_variable_str(ftype) > 0, "'", file.path(), "' ", name,
            " is not a variable-length string (malformed)");
  h5::Hid type = h5::vlen_string_type();
  char* p = nullptr;
  NNX_CHECK(H5Dread(dset, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, &p) >= 0, "cannot read ", name, " in '",
            file.path(), "'");
  std::string s = p ? p : "";
  if (p) H5free_memory(p);
  auto sum = h5::read_string_attr(dset, schema::kChecksum, name);
  NNX_CHECK(!sum || *sum == io::checksum_bytes(s.data(), s.size()), "'", file.path(), "' ", name,
            ": checksum mismatch; the checkpoint is corrupt");
  auto j = nlohmann::json::parse(s, nullptr, false);
  NNX_CHECK(!j.is_discarded(), "'", file.path(), "' ", name, " is not valid JSON");
  return j;
}

}  // namespace nnx::checkpoint
