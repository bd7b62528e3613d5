#include "nnx/framework/blas.h"

#include <dlfcn.h>
#include <limits.h>
#include <stdlib.h>

namespace nnx {

std::string blas_library_path() {
  void* sym = dlsym(RTLD_DEFAULT, "sgemm_");
  if (sym == nullptr) return "";
  Dl_info info{};
  if (dladdr(sym, &info) == 0 || info.dli_fname == nullptr) return "";
  char resolved[PATH_MAX];
  if (realpath(info.dli_fname, resolved) == nullptr) return info.dli_fname;
  return resolved;
}

bool blas_is_reference() {
  std::string p = blas_library_path();
  // Debian's reference BLAS lives in .../blas/libblas.so.3.*; OpenBLAS, BLIS and MKL elsewhere.
  return p.find("/blas/libblas.so") != std::string::npos;
}

bool set_blas_num_threads(int n) {
  using SetThreads = void (*)(int);
  for (const char* name : {"openblas_set_num_threads", "bli_thread_set_num_threads"})
    if (void* sym = dlsym(RTLD_DEFAULT, name)) {
      reinterpret_cast<SetThreads>(sym)(n);
      return true;
    }
  return false;
}

}  // namespace nnx
