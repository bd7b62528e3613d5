#include "nnx/framework/error_kind.h"

#include "nnx/framework/error.h"

namespace nnx {

ErrorKind error_kind_of(const std::exception_ptr& e) {
  if (!e) return ErrorKind::kIO;
  try {
    std::rethrow_exception(e);
  } catch (const IOError&) {
    return ErrorKind::kIO;
  } catch (const InternalError&) {
    return ErrorKind::kInternal;
  } catch (const Error&) {
    return ErrorKind::kInput;
  } catch (...) {
    return ErrorKind::kIO;
  }
}

void throw_error(ErrorKind kind, const std::string& message) {
  switch (kind) {
    case ErrorKind::kInput: throw Error(message);
    case ErrorKind::kInternal: throw InternalError(message);
    default: throw IOError(message);
  }
}

}  // namespace nnx
