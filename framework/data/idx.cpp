#include "nnx/framework/data/idx.h"

#include <ATen/ATen.h>
#include <zlib.h>

#include <memory>

#include "nnx/framework/error.h"

namespace nnx::data {

at::Tensor read_idx_gz(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  NNX_CHECK(f != nullptr, "cannot open IDX file '", path,
            "' (install Debian's dataset-fashion-mnist or set data.root)");
  std::unique_ptr<gzFile_s, int (*)(gzFile)> guard(f, gzclose);
  auto read_exact = [&](void* dst, size_t n, const char* what) {
    size_t done = 0;
    while (done < n) {
      int r = gzread(f, static_cast<char*>(dst) + done, static_cast<unsigned>(std::min<size_t>(n - done, 1u << 30)));
      NNX_CHECK(r > 0, "IDX file '", path, "' is truncated or corrupt while reading ", what, " (",
                done, " of ", n, " bytes)");
      done += static_cast<size_t>(r);
    }
  };
  unsigned char magic[4];
  read_exact(magic, 4, "the magic number");
  NNX_CHECK(magic[0] == 0 && magic[1] == 0 && magic[2] == 0x08,
            "IDX file '", path, "' has an unsupported magic number (expected unsigned bytes, type 0x08)");
  int ndim = magic[3];
  NNX_CHECK(ndim >= 1 && ndim <= 4, "IDX file '", path, "' declares ", ndim, " dimensions");
  std::vector<int64_t> shape(ndim);
  int64_t numel = 1;
  for (int i = 0; i < ndim; ++i) {
    unsigned char b[4];
    read_exact(b, 4, "the shape");
    shape[i] = (int64_t(b[0]) << 24) | (int64_t(b[1]) << 16) | (int64_t(b[2]) << 8) | int64_t(b[3]);
    numel *= shape[i];
  }
  at::Tensor out = at::empty(shape, at::kByte);
  read_exact(out.data_ptr<uint8_t>(), static_cast<size_t>(numel), "the data");
  return out;
}

}  // namespace nnx::data
