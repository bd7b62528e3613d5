// safetensors files (Hugging Face's format, read by PyTorch, Flax and Orbax's v1 API): an
// 8-byte little-endian header length N, N bytes of JSON naming each tensor's dtype, shape and
// byte range, then the tensors' bytes. https://github.com/huggingface/safetensors (format).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace nnx::checkpoint {

/// What a safetensors file holds: its tensors in file order (name, CPU tensor) and the
/// header's "__metadata__" (string to string).
struct Safetensors {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  std::map<std::string, std::string> metadata;
};

/// The largest header read (100 MB, the reference implementation's limit).
constexpr uint64_t kSafetensorsMaxHeader = 100'000'000;

/// Reads `path`. Every bound is checked before any tensor is allocated: the header length
/// against the file and kSafetensorsMaxHeader; a JSON object no deeper than a header is, with
/// no duplicate names; per tensor a known dtype (BOOL, U8, I8, I16, I32, I64, F16, BF16, F32,
/// F64), a shape of non-negative integers whose element count times the dtype's size equals its
/// byte range; the ranges cover the data exactly (no holes, no overlaps, none past the end).
/// Throws nnx::Error "FILE: what is wrong (expected ..., found ...)" for a bad file and
/// nnx::IOError when it cannot be read.
Safetensors read_safetensors(const std::string& path);

/// The same checks and result for a file's bytes in memory (`data`, `size`), named `source` in
/// errors (the fuzz target's entry).
Safetensors parse_safetensors(const void* data, size_t size, const std::string& source);

/// Writes `tensors` (unique names; any device, made contiguous CPU; dtypes as read_safetensors
/// accepts) with `metadata` as "__metadata__", the header padded with spaces to a multiple of 8
/// bytes, the data in the given order. Written beside `path` and renamed over it after fsync
/// (`sync` false: no fsync, for a temporary file a crash may lose): no half-written file under
/// the final name. Throws nnx::Error for a duplicate name or an unsupported dtype (nothing
/// written), nnx::IOError when the file cannot be written.
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {}, bool sync = true);

}  // namespace nnx::checkpoint
