// Reader for gzip-compressed IDX files (the MNIST / Fashion-MNIST format), through zlib.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>

namespace nnx::data {

/// Reads a gzip IDX file of unsigned bytes (magic 0x00000801 labels, 0x00000803 images) into a
/// uint8 tensor of the file's shape ([N] or [N, rows, cols]). Throws nnx::Error naming the file
/// when it is missing, truncated, or not an unsigned-byte IDX file.
at::Tensor read_idx_gz(const std::string& path);

}  // namespace nnx::data
