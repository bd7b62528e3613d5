// What every nnx program's main does with an exception: one line on stderr, no stack trace,
// exit 2 for bad input (nnx::Error) and 1 for everything else.
#pragma once

#include <c10/util/Exception.h>

#include <exception>
#include <iostream>
#include <string>

#include "nnx/framework/error.h"

namespace nnx::tools {

/// Runs `body` (returning the exit code); an exception becomes "<program>: error: <what>" and
/// its exit code.
template <class F>
int run_main(const char* program, F&& body) {
  try {
    return body();
  } catch (const nnx::Error& e) {
    std::cerr << program << ": error: " << e.what() << "\n";
    return e.exit_code();
  } catch (const c10::Error& e) {
    std::cerr << program << ": error: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << program << ": error: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace nnx::tools
