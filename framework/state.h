// nnx::State: an ordered map path -> VariableState, what split/state/optimizers/checkpoints exchange.
#pragma once

#include <ATen/core/Tensor.h>

#include <iosfwd>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "nnx/framework/filter.h"
#include "nnx/framework/variable.h"

namespace nnx {

/// One variable's state: kind, tensor and metadata (nnx.VariableState).
struct VariableState {
  Kind kind = Param;
  at::Tensor value;
  Metadata metadata;
};

/// A nested view of a State: a tree keyed by path component. Leaves hold a VariableState.
struct NestedState {
  std::vector<std::string> keys;      ///< child names in insertion order
  std::vector<NestedState> children;  ///< children[i] belongs to keys[i]
  std::optional<VariableState> leaf;  ///< set on leaves only
  /// The child named `key`; throws nnx::Error naming the key when absent.
  const NestedState& operator[](const std::string& key) const;
};

/// An ordered map from '/'-joined paths to VariableStates. Iteration follows insertion order,
/// which for module states is the module's registration order (deterministic).
/// Tensors are held by reference: a State from nnx::state(module) aliases the module's tensors;
/// use clone() for an independent copy.
class State {
 public:
  using Entry = std::pair<std::string, VariableState>;

  State() = default;

  /// Adds `path`; throws nnx::Error when the path is empty or already present.
  void insert(const std::string& path, VariableState vs);
  /// Adds or replaces `path`.
  void set(const std::string& path, VariableState vs);
  /// Removes `path`; returns whether it was present.
  bool erase(const std::string& path);
  bool contains(const std::string& path) const { return index_.count(path) > 0; }
  /// The entry at `path`; throws nnx::Error naming the path (and the nearest paths) when absent.
  VariableState& at(const std::string& path);
  const VariableState& at(const std::string& path) const;

  size_t size() const { return entries_.size(); }
  bool empty() const { return entries_.empty(); }
  std::vector<Entry>::const_iterator begin() const { return entries_.begin(); }
  std::vector<Entry>::const_iterator end() const { return entries_.end(); }
  std::vector<Entry>::iterator begin() { return entries_.begin(); }
  std::vector<Entry>::iterator end() { return entries_.end(); }
  /// The paths in order.
  std::vector<std::string> paths() const;

  /// The entries matching `filter`, in order.
  State filter(const Filter& filter) const;
  /// Partitions by `filters`: the first matching filter wins. A variable no filter matches is an
  /// error naming its path, unless the last filter is Everything().
  std::vector<State> split(const std::vector<Filter>& filters) const;
  /// Union; on a shared path the right-hand side wins (nnx.State.merge / `|`).
  State operator|(const State& other) const;
  /// The entries whose path is not in `other`.
  State difference(const State& other) const;

  /// Same paths in the same order, same kinds, dtypes, shapes, and bitwise-equal values.
  bool equal(const State& other) const;
  /// Same paths/kinds/dtypes/shapes and values within at::allclose(rtol, atol).
  bool allclose(const State& other, double rtol = 1e-5, double atol = 1e-8) const;
  /// A description of the first difference found by equal(), or "" when equal.
  std::string first_difference(const State& other) const;

  /// Total bytes of all tensors (numel * element size).
  int64_t nbytes() const;
  /// Deep copy: every tensor cloned (detached).
  State clone() const;
  /// A copy with every tensor moved to `device` (tensors already there are not copied).
  State to(const c10::Device& device) const;

  /// The nested (tree) view.
  NestedState nested() const;
  /// Flattens a nested view back into a State (paths joined with '/').
  static State from_nested(const NestedState& nested);

  /// A table: path, kind, shape, dtype, bytes; one line per variable, then a total.
  std::string to_string() const;

 private:
  std::vector<Entry> entries_;
  std::unordered_map<std::string, size_t> index_;
  void reindex();
};

std::ostream& operator<<(std::ostream& os, const State& state);

/// "12.5 MiB"-style byte count.
std::string format_bytes(int64_t bytes);
/// "[2, 3]" for a tensor's sizes.
std::string format_shape(at::IntArrayRef sizes);
/// Splits "a/b/c" into {"a", "b", "c"}.
std::vector<std::string> split_path(const std::string& path);

}  // namespace nnx
