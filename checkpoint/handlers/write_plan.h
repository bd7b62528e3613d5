// Who writes what in a multi-rank save: each handler lists its writes, the Checkpointer
// balances them over the ranks, and each handler reads its item's part back.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace nnx::checkpoint {

/// Where one of an item's entries is written in a save by world_size > 1 ranks.
enum class Placement {
  kOneRank,     ///< by one rank into its shard file, chosen to balance the ranks' bytes
  kEveryRank,   ///< by every rank, its own shard of the entry (a sharded PartitionSpec)
  kGlobalFile,  ///< by rank 0 straight into checkpoint.h5 (scalars, empty tensors)
};

/// One entry an item's handler writes (ItemHandler::plan_writes): its path within the item, its
/// bytes (what the balancing weighs; kOneRank only) and its placement.
struct WriteRequest {
  std::string path;
  int64_t bytes = 0;
  Placement placement = Placement::kOneRank;
};

/// An entry's writer: its placement, and the rank for kOneRank (-1 otherwise).
struct Writer {
  Placement placement = Placement::kGlobalFile;
  int rank = -1;
  /// True when `rank` writes (a part of) the entry into its shard file.
  bool writes_shard(int r) const { return placement == Placement::kEveryRank || (placement == Placement::kOneRank && rank == r); }
};

/// The writers of every item's entries. Deterministic: the same requests give every rank the
/// same plan (the ranks compare digest()s before anything is committed).
class WritePlan {
 public:
  /// Balances the kOneRank requests of all items (item name, its requests) over world_size
  /// ranks: by bytes descending, then "item/path", each to the least-loaded rank (the lowest
  /// rank on ties). Throws nnx::Error for a path requested twice in one item.
  static WritePlan balance(const std::vector<std::pair<std::string, std::vector<WriteRequest>>>& items, int world_size);
  /// The writer of `path` in item `item`. Throws nnx::Error naming both when the item's handler
  /// did not request it.
  const Writer& at(const std::string& item, const std::string& path) const;
  /// True when the plan holds nothing (a single-rank save).
  bool empty() const { return writers_.empty(); }
  /// A text that differs between two plans that differ (each "item/path=writer;", in order).
  std::string digest_text() const;

 private:
  std::map<std::string, std::map<std::string, Writer>> writers_;  // item -> path -> writer
};

}  // namespace nnx::checkpoint
