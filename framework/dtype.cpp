#include "nnx/framework/dtype.h"

#include <utility>

#include "nnx/framework/error.h"

namespace nnx {

namespace {
const std::pair<const char*, at::ScalarType> kNames[] = {
    {"float64", at::kDouble}, {"float32", at::kFloat}, {"float16", at::kHalf}, {"bfloat16", at::kBFloat16},
    {"int64", at::kLong},     {"int32", at::kInt},     {"int16", at::kShort},  {"int8", at::kChar},
    {"uint8", at::kByte},     {"bool", at::kBool}};
}  // namespace

std::string dtype_name(at::ScalarType t) {
  for (const auto& [name, type] : kNames)
    if (type == t) return name;
  NNX_CHECK(false, "dtype ", t, " has no name here (supported: float64, float32, float16, bfloat16, int64, int32, ",
            "int16, int8, uint8, bool); it cannot be checkpointed or configured");
  return "";
}

at::ScalarType dtype_from_name(const std::string& n) {
  for (const auto& [name, type] : kNames)
    if (n == name) return type;
  NNX_CHECK(false, "unknown dtype '", n, "'");
  return at::kFloat;
}

}  // namespace nnx
