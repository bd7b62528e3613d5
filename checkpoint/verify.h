// Checking a committed checkpoint end to end (nnx-ckpt verify).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace nnx::checkpoint {

/// Result of verify().
struct VerifyReport {
  bool ok = true;
  std::vector<std::string> problems;  ///< one line per failure: file, dataset, expected vs found
  int64_t datasets_checked = 0;
  int64_t bytes_checked = 0;
};

/// Checks a committed checkpoint: metadata, each file's size and checksum, every dataset's
/// checksum, and flags floating-point datasets holding NaN or Inf. Never throws for corruption;
/// reports it.
VerifyReport verify(const std::filesystem::path& directory);

}  // namespace nnx::checkpoint
