// nnx::Error and the check macros every part of nnx-cpp uses.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace nnx {

/// A user-facing error: bad input, bad config, bad state (a wrong path, shape or dtype).
/// Programs print what() on one line and exit with exit_code() (2 for bad input).
class Error : public std::runtime_error {
 public:
  /// `message` is the whole user-facing text; `file`/`line` locate the check that failed.
  Error(const std::string& message, const char* file = "", int line = 0)
      : std::runtime_error(message), file_(file), line_(line) {}
  /// Source file of the failed check (for developers; never printed to users by default).
  const char* file() const { return file_; }
  /// Source line of the failed check.
  int line() const { return line_; }
  /// Exit code a program should use: 2 for bad input (this class).
  virtual int exit_code() const { return 2; }

 private:
  const char* file_;
  int line_;
};

/// An I/O or system failure (disk full, permission denied, a failed fsync): exit code 1.
class IOError : public Error {
 public:
  using Error::Error;
  int exit_code() const override { return 1; }
};

/// A broken internal invariant: a bug in nnx-cpp, not in the user's input. Exit code 1.
class InternalError : public Error {
 public:
  using Error::Error;
  int exit_code() const override { return 1; }
};

namespace detail {
template <class... Parts>
std::string str(const Parts&... parts) {
  std::ostringstream os;
  (void)std::initializer_list<int>{((os << parts), 0)...};
  return os.str();
}
}  // namespace detail

}  // namespace nnx

/// Throws nnx::Error built from `parts` (streamed with <<) when `cond` is false.
#define NNX_CHECK(cond, ...)                                                        \
  do {                                                                              \
    if (!(cond)) throw ::nnx::Error(::nnx::detail::str(__VA_ARGS__), __FILE__, __LINE__); \
  } while (0)

/// Throws nnx::IOError built from `parts` when `cond` is false.
#define NNX_CHECK_IO(cond, ...)                                                       \
  do {                                                                                \
    if (!(cond)) throw ::nnx::IOError(::nnx::detail::str(__VA_ARGS__), __FILE__, __LINE__); \
  } while (0)

/// Internal invariant; failure means a bug in nnx-cpp. Throws nnx::InternalError.
#define NNX_INTERNAL_ASSERT(cond, ...)                                                   \
  do {                                                                                   \
    if (!(cond))                                                                         \
      throw ::nnx::InternalError(                                                        \
          ::nnx::detail::str("internal error (please report): ", #cond, " ", ##__VA_ARGS__), \
          __FILE__, __LINE__);                                                           \
  } while (0)
