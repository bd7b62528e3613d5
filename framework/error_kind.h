// Errors that cross ranks keep their type: a rank sends its exception's kind with the message
// and the others throw the same nnx type, so one bad input exits with the same code (2 for bad
// input, 1 for an I/O or internal failure) at one rank and at N.
#pragma once

#include <exception>
#include <string>

namespace nnx {

/// The nnx exception type of a failure, as it travels between ranks (a number in JSON).
enum class ErrorKind : int {
  kInput = 0,     ///< nnx::Error: bad input, config or state (exit code 2)
  kIO = 1,        ///< nnx::IOError, and any non-nnx exception (c10::Error, std::bad_alloc): exit code 1
  kInternal = 2,  ///< nnx::InternalError: a bug in nnx-cpp (exit code 1)
};

/// The kind of `e` (see ErrorKind); kIO for a null pointer or an unknown exception.
ErrorKind error_kind_of(const std::exception_ptr& e);

/// Throws the nnx type of `kind` (another number: nnx::IOError) with `message`.
[[noreturn]] void throw_error(ErrorKind kind, const std::string& message);

}  // namespace nnx
