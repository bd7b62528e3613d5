// Which BLAS libtorch's CPU matmuls run on (Debian switches libblas.so.3 by alternatives).
#pragma once

#include <string>

namespace nnx {

/// The file that provides the sgemm_ symbol in this process, resolved through symlinks
/// ("/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3"), or "" when none is loaded.
std::string blas_library_path();
/// True when the provider is Debian's reference BLAS (~25x slower than OpenBLAS on matmuls).
bool blas_is_reference();
/// Sets the BLAS's own thread count where it has one (OpenBLAS's openblas_set_num_threads, BLIS's
/// bli_thread_set_num_threads; MKL follows at::set_num_threads). OpenBLAS's pthread build
/// otherwise starts one thread per core in every process, whatever at::set_num_threads says, and
/// several ranks on one host oversubscribe its cores. Returns whether a BLAS took it. n >= 1.
bool set_blas_num_threads(int n);

}  // namespace nnx
