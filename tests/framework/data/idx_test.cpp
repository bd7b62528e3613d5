#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <zlib.h>

#include <filesystem>

#include "nnx/framework/data/dataset.h"
#include "nnx/framework/data/idx.h"
#include "nnx/framework/data/loader.h"
#include "nnx/framework/error.h"
#include "test_util.h"

using namespace nnx;
using namespace nnx::data;

namespace {
void write_gz(const std::filesystem::path& p, const std::string& bytes) {
  gzFile f = gzopen(p.c_str(), "wb");
  gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
  gzclose(f);
}
std::string idx_header(int ndim, std::vector<uint32_t> dims) {
  std::string h = {0, 0, 8, static_cast<char>(ndim)};
  for (auto d : dims) {
    h.push_back(static_cast<char>(d >> 24));
    h.push_back(static_cast<char>(d >> 16));
    h.push_back(static_cast<char>(d >> 8));
    h.push_back(static_cast<char>(d));
  }
  return h;
}
}  // namespace

TEST(Data, IdxReaderParsesAndRejectsBadFiles) {
  test::TempDir dir;
  std::string body = idx_header(3, {2, 2, 3}) + std::string("\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c", 12);
  write_gz(dir / "ok.gz", body);
  at::Tensor t = read_idx_gz((dir / "ok.gz").string());
  EXPECT_EQ(t.sizes(), (std::vector<int64_t>{2, 2, 3}));
  EXPECT_EQ(t[1][1][2].item<int>(), 12);
  write_gz(dir / "short.gz", body.substr(0, body.size() - 3));
  try {
    read_idx_gz((dir / "short.gz").string());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("short.gz"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos);
  }
  write_gz(dir / "float.gz", std::string("\0\0\x0d\x01", 4) + std::string(8, '\0'));
  EXPECT_THROW(read_idx_gz((dir / "float.gz").string()), Error);
  EXPECT_THROW(read_idx_gz((dir / "missing.gz").string()), Error);
}
