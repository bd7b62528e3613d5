// Helpers shared by nnx-cpp's tests: unique temporary directories and golden-value loading.
#pragma once

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

namespace nnx::test {

/// A fresh directory under $TMPDIR (or /tmp), removed when the test passed.
class TempDir {
 public:
  TempDir() : TempDir(std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp") {}
  /// A new directory under `base` (e.g. /dev/shm for a memory tier).
  explicit TempDir(const std::string& base) {
    std::string tmpl = base + "/nnx-test-XXXXXX";
    char* p = ::mkdtemp(tmpl.data());
    if (p == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = p;
  }
  TempDir(const TempDir&) = delete;  // a copy would remove the directory when it goes
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    if (!::testing::Test::HasFailure()) {
      std::error_code ec;
      std::filesystem::remove_all(path_, ec);
    }
  }
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& s) const { return path_ / s; }

 private:
  std::filesystem::path path_;
};

/// The source directory's tests/ folder (compiled in).
inline std::filesystem::path tests_dir() { return NNX_TESTS_DIR; }

/// Loads a golden JSON file from tests/golden.
inline nlohmann::json load_golden(const std::string& name) {
  std::ifstream in(tests_dir() / "golden" / name);
  if (!in) throw std::runtime_error("missing golden file " + name);
  return nlohmann::json::parse(in);
}

/// A float32 tensor from {"shape": [...], "data": [...]}.
inline at::Tensor golden_tensor(const nlohmann::json& j, at::ScalarType dtype = at::kFloat) {
  auto data = j.at("data").get<std::vector<double>>();
  auto shape = j.at("shape").get<std::vector<int64_t>>();
  return at::tensor(data, at::kDouble).reshape(shape).to(dtype);
}

}  // namespace nnx::test
