// Which BLAS libtorch's CPU matmuls run on (Debian switches libblas.so.3 by alternatives).
#pragma once

#include <string>

namespace nnx {

/// The file that provides the sgemm_ symbol in this process, resolved through symlinks
/// ("/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3"), or "" when none is loaded.
std::string blas_library_path();
/// True when the provider is Debian's reference BLAS (~25x slower than OpenBLAS on matmuls).
bool blas_is_reference();

}  // namespace nnx
