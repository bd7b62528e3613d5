#include "nnx/checkpoint/format/safetensors.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include "nnx/framework/error.h"
#include "test_util.h"

using namespace nnx;
using namespace nnx::checkpoint;

namespace {

// A file of header `json` (unpadded) followed by `data_bytes` zero bytes.
std::string image(const std::string& json, size_t data_bytes) {
  std::string out(8, '\0');
  const uint64_t n = json.size();
  std::memcpy(out.data(), &n, 8);
  return out + json + std::string(data_bytes, '\0');
}

std::string error_of(const std::string& bytes) {
  try {
    parse_safetensors(bytes.data(), bytes.size(), "x.safetensors");
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST(Safetensors, EveryDtypeRoundTripsBitwiseWithMetadata) {
  test::TempDir dir;
  const std::string path = (dir / "t.safetensors").string();
  std::vector<std::pair<std::string, at::Tensor>> in = {
      {"f32", at::randn({3, 4})},
      {"bf16", at::randn({5}).to(at::kBFloat16)},
      {"f16", at::randn({2, 2}).to(at::kHalf)},
      {"i64", at::arange(7, at::kLong)},
      {"bool", at::rand({6}) > 0.5},
      {"u8", at::randint(0, 255, {3}, at::kByte)},
      {"i8", at::randint(-100, 100, {3}, at::kChar)},
      {"i16", at::randint(-100, 100, {3}, at::kShort)},
      {"i32", at::randint(-100, 100, {3}, at::kInt)},
      {"f64", at::randn({2}, at::kDouble)},
      {"scalar", at::tensor(3.5f)},
      {"empty", at::empty({0, 4})},
      {"strided", at::randn({4, 3}).t()}};  // written contiguous
  write_safetensors(path, in, {{"format", "pt"}, {"step", "12"}});
  const Safetensors out = read_safetensors(path);
  ASSERT_EQ(out.tensors.size(), in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    EXPECT_EQ(out.tensors[i].first, in[i].first);
    EXPECT_EQ(out.tensors[i].second.scalar_type(), in[i].second.scalar_type()) << in[i].first;
    EXPECT_EQ(out.tensors[i].second.sizes(), in[i].second.sizes()) << in[i].first;
    EXPECT_TRUE(at::equal(out.tensors[i].second, in[i].second)) << in[i].first;
  }
  EXPECT_EQ(out.metadata, (std::map<std::string, std::string>{{"format", "pt"}, {"step", "12"}}));
  // The header is padded to 8 bytes, so the data starts aligned, and no temporary file is left.
  std::ifstream f(path, std::ios::binary);
  uint64_t n = 0;
  f.read(reinterpret_cast<char*>(&n), 8);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()), std::filesystem::directory_iterator()), 1);
  // The in-memory parser gives the same.
  std::ifstream whole(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(whole)), std::istreambuf_iterator<char>());
  const Safetensors parsed = parse_safetensors(bytes.data(), bytes.size(), path);
  for (size_t i = 0; i < in.size(); ++i) EXPECT_TRUE(at::equal(parsed.tensors[i].second, in[i].second));
}

TEST(Safetensors, WriterRefusesWhatTheFormatCannotHoldAndWritesNothing) {
  test::TempDir dir;
  const std::string path = (dir / "t.safetensors").string();
  EXPECT_THROW(write_safetensors(path, {{"a", at::ones({2})}, {"a", at::ones({2})}}), Error);
  EXPECT_THROW(write_safetensors(path, {{"__metadata__", at::ones({2})}}), Error);
  try {
    write_safetensors(path, {{"c", at::ones({2}, at::kComplexFloat)}});
    ADD_FAILURE() << "complex written";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 'c' has dtype ComplexFloat"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_THROW(read_safetensors((dir / "missing").string()), IOError);
}

TEST(Safetensors, HostileFilesAreOneClearErrorEach) {
  const std::string ok = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  EXPECT_EQ(parse_safetensors(image(ok, 8).data(), image(ok, 8).size(), "x").tensors.size(), 1u);
  std::string past = image(ok, 8);
  const uint64_t huge = 1000;
  std::memcpy(past.data(), &huge, 8);
  const std::vector<std::pair<std::string, std::string>> cases = {
      {std::string("\x01\x02", 2), "too short for a safetensors file"},
      {past, "header length 1000 runs past the end of the file"},
      {[] { std::string s(16, '\0'); uint64_t n = 200'000'000; std::memcpy(s.data(), &n, 8); return s; }(), "over the limit"},
      {image("not json", 0), "must be a JSON object"},
      {image("{\"a\":", 0), "not valid JSON"},
      {image("[1]", 0), "must be a JSON object"},
      {image(R"({"a":{"dtype":"F32","shape":[[[[[1]]]]],"data_offsets":[0,4]}})", 4), "nests deeper"},
      {image("{\"a\":" + std::string(100000, '[') + std::string(100000, ']') + "}", 0), "nests deeper"},
      {image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8), "names 'a' twice"},
      {image(R"({"a":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}})", 8), "dtype 'C64' is not supported"},
      {image(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8), "shape [3] of F32 needs 12 bytes, but data_offsets give 8"},
      {image(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})", 8), "needs more than 2^64 bytes"},
      {image(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,8]}})", 8), "must be a non-negative integer"},
      {image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12), "overlaps the previous tensor"},
      {image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8), "a hole before it"},
      {image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4), "a tensor ends past the end of the file"},
      {image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 8), "bytes after the last tensor"},
      {image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8), "end before they begin"},
      {image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"extra":1}})", 8), "unknown field 'extra'"},
      {image(R"({"a":{"dtype":"F32","shape":[2]}})", 8), "data_offsets must be [begin, end]"},
      {image(R"({"a":[1,2]})", 0), "expected an object with dtype, shape and data_offsets"},
      {image(R"({"__metadata__":{"k":1}})", 0), "__metadata__ 'k' must be a string"},
      // Found by a review: no elements but strides past int64 (libtorch's at::empty would fail or
      // overflow), a NUL that would end the parser's input, a field given twice, a huge shape list
      // (the JSON tree would grow first), and a count x size that wraps.
      {image(R"({"a":{"dtype":"F32","shape":[0,4611686018427387904,4],"data_offsets":[0,0]}})", 0), "its strides overflow"},
      {image(std::string(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})") + std::string(1, '\0') + "}}", 4),
       "the header holds a NUL byte"},
      {image(R"({"a":{"dtype":"F64","dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4), "field 'dtype' is given twice"},
      {image(R"({"a":{"dtype":"F32","shape":[)" + [] { std::string s = "1"; for (int i = 0; i < 70; ++i) s += ",1"; return s; }() +
                 R"(],"data_offsets":[0,4]}})", 4), "a list of more than 64 entries"},
      {image(R"({"a":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]}})", 0), "needs more than 2^64 bytes"},
  };
  for (const auto& [bytes, expected] : cases) {
    const std::string e = error_of(bytes);
    EXPECT_NE(e.find(expected), std::string::npos) << "expected: " << expected << "\ngot: " << e;
    EXPECT_EQ(e.rfind("x.safetensors", 0), 0u) << e;  // every error names the file
  }
}
