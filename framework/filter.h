// Filters select variables by kind and path (Flax NNX's filters).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "nnx/framework/variable.h"

namespace nnx {

/// A predicate over (path, kind). A Kind converts to the filter "variables of this kind (or a
/// descendant kind)". Paths are '/'-joined names, e.g. "blocks/0/attn/qkv/kernel".
class Filter {
 public:
  using Fn = std::function<bool(const std::string& path, const Kind& kind)>;
  /// A filter from a predicate and a description used in error messages.
  Filter(Fn fn, std::string description, bool is_everything = false);
  /// Variables of `kind` or of a kind descending from it.
  Filter(const Kind& kind);  // NOLINT(google-explicit-constructor): Flax's `split(m, Param, ...)`

  bool operator()(const std::string& path, const Kind& kind) const { return fn_(path, kind); }
  const std::string& description() const { return description_; }
  /// True only for Everything(): it may close a split's filter list.
  bool is_everything() const { return is_everything_; }

 private:
  Fn fn_;
  std::string description_;
  bool is_everything_;
};

/// Matches every variable (nnx.Everything / `...`).
Filter Everything();
/// Matches no variable.
Filter Nothing();
/// Matches when `part` equals one path component or a contiguous run of them ("attn/qkv").
Filter PathContains(const std::string& part);
/// Matches when std::regex_search finds `pattern` in the path. Throws nnx::Error on a bad regex.
Filter PathRegex(const std::string& pattern);
/// Matches exactly the listed paths.
Filter PathIn(std::vector<std::string> paths);
/// Matches when every filter matches.
Filter All(std::vector<Filter> filters);
/// Matches when any filter matches.
Filter Any(std::vector<Filter> filters);
/// Matches when `filter` does not.
Filter Not(Filter filter);

}  // namespace nnx
