// Reading a State item from HDF5, validated against a template; listing items for tools.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "nnx/checkpoint/format/h5_file.h"
#include "nnx/checkpoint/format/range.h"
#include "nnx/checkpoint/format/read_options.h"
#include "nnx/framework/filter.h"
#include "nnx/framework/sharding.h"
#include "nnx/framework/state.h"

namespace nnx::checkpoint {

/// Decides what of each stored array a template variable reads (checkpoint/shard_planner.h
/// maps a PartitionSpec and a Mesh onto it; the format knows neither).
class ReadPlanner {
 public:
  virtual ~ReadPlanner() = default;
  /// std::nullopt: the whole stored array of `stored_shape`, which must then be the template's
  /// shape; a Range: those elements, whose shape the template must have. Throws nnx::Error
  /// naming `path`, `where` and both shapes when the template does not fit.
  virtual std::optional<Range> plan(const std::string& path, const VariableState& templ,
                                    const std::vector<int64_t>& stored_shape, const std::string& where) const = 0;
  /// The restored variable's metadata, given the stored one.
  virtual Metadata restored_metadata(const VariableState& templ, Metadata stored) const = 0;
};

/// Reads /<item> validated against `templ` (an abstract State from eval_shape, or a real one):
/// a missing path, an unexpected path, a shape or dtype mismatch, a bad checksum is an nnx::Error
/// naming the file, the path and both values. What each variable reads is `planner`'s choice.
/// Every byte is read and verified before any dtype conversion or device copy. Returns a State
/// in the template's order with the stored kinds.
State read_item_state(const H5File& file, const std::string& item, const State& templ, const ReadOptions& options,
                      const ReadPlanner& planner);

/// Reads every dataset under /<item> without a template (tools, conversions).
State read_state_untemplated(const H5File& file, const std::string& item, bool verify_checksums = true);

/// One dataset's description, for tools.
struct DatasetInfo {
  std::string path;  ///< path inside the item
  std::string kind;
  std::string dtype;
  std::vector<int64_t> shape;
  std::string sharding;
  std::string checksum;
  int64_t nbytes = 0;
};
/// Lists the datasets under /<item> in file order. Throws nnx::Error when the item is absent.
std::vector<DatasetInfo> list_item(const H5File& file, const std::string& item);
/// Names of the top-level State items (groups other than "json").
std::vector<std::string> list_items(const H5File& file);

}  // namespace nnx::checkpoint
