// How a model or dataset type registered with nnx-train reads its own keys of the YAML config,
// with the errors nnx-train gives for its built-in keys (FILE:LINE:COL, the dotted key, the
// nearest valid key for a typo).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace nnx::trainer {

/// The keys of one config section (model: or data:) as a registered type reads them. Every
/// method marks its key as known: a key that no reader asked for is an "unknown key" error once
/// the section is read. Every error is an nnx::Error (exit code 2) naming where the value came
/// from: "FILE:LINE:COL" or "override 'model.width=0'".
class OptionReader {
 public:
  virtual ~OptionReader() = default;
  /// An integer in [lo, hi]; `def` when absent.
  virtual int64_t integer(const std::string& key, int64_t def, int64_t lo, int64_t hi) = 0;
  /// A number in [lo, hi]; `def` when absent.
  virtual double number(const std::string& key, double def, double lo, double hi) = 0;
  /// true or false (YAML 1.2 booleans only; "yes" is an error that says "did you mean true?").
  virtual bool boolean(const std::string& key, bool def) = 0;
  /// Any string; `def` when absent.
  virtual std::string string(const std::string& key, const std::string& def) = 0;
  /// One of `allowed`; `def` when absent.
  virtual std::string one_of(const std::string& key, const std::string& def, const std::vector<std::string>& allowed) = 0;
  /// A list of integers; `def` when absent.
  virtual std::vector<int64_t> integers(const std::string& key, const std::vector<int64_t>& def) = 0;
  /// A list of strings; `def` when absent.
  virtual std::vector<std::string> strings(const std::string& key, const std::vector<std::string>& def) = 0;
  /// Throws the error "WHERE: 'SECTION.KEY' MESSAGE" for a value that the checks above cannot
  /// express (e.g. one key must divide another); MESSAGE starts with a space.
  [[noreturn]] virtual void fail(const std::string& key, const std::string& message) = 0;
};

}  // namespace nnx::trainer
