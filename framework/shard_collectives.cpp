#include "nnx/framework/shard_collectives.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <map>

#include "nnx/framework/distributed.h"
#include "nnx/framework/error.h"
#include "nnx/framework/sharding.h"
#include "nnx/framework/write_fence.h"

namespace nnx::distributed {

namespace {

// The tensors of one dtype and where each rank's rows sit in a packed piece.
struct Packing {
  std::vector<at::Tensor> tensors;
  std::vector<size_t> index;  // of each tensor in the caller's list
  int world_size = 1;
  int64_t largest = 0;  // elements of the largest rank's piece

  ShardRange rows(const at::Tensor& t, int k) const { return shard_range(t.size(0), k, world_size); }
  static int64_t row_numel(const at::Tensor& t) { return t.size(0) == 0 ? int64_t(0) : t.numel() / t.size(0); }

  void measure() {
    largest = 0;
    for (int k = 0; k < world_size; ++k) {
      int64_t total = 0;
      for (const auto& t : tensors) total += rows(t, k).size * row_numel(t);
      largest = std::max(largest, total);
    }
  }
  // piece <- rank k's rows of every tensor, in order.
  void pack(at::Tensor piece, int k) const {
    int64_t off = 0;
    for (const auto& t : tensors) {
      const ShardRange r = rows(t, k);
      const int64_t m = r.size * row_numel(t);
      if (m) piece.narrow(0, off, m).view(t.narrow(0, r.start, r.size).sizes()).copy_(t.narrow(0, r.start, r.size));
      off += m;
    }
  }
  // Rank k's rows of every tensor <- piece.
  void unpack(const at::Tensor& piece, int k) const {
    int64_t off = 0;
    for (const auto& t : tensors) {
      const ShardRange r = rows(t, k);
      const int64_t m = r.size * row_numel(t);
      if (m) {
        at::Tensor dst = t.narrow(0, r.start, r.size);
        dst.copy_(piece.narrow(0, off, m).view(dst.sizes()));
      }
      off += m;
    }
  }
};

std::map<at::ScalarType, Packing> by_dtype(const std::vector<at::Tensor>& tensors, int world_size, const char* what) {
  std::map<at::ScalarType, Packing> out;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    NNX_CHECK(t.dim() >= 1, what, ": a 0-d tensor is replicated, not sharded");
    Packing& p = out[t.scalar_type()];
    p.world_size = world_size;
    p.tensors.push_back(t);
    p.index.push_back(i);
  }
  for (auto& [dtype, p] : out) p.measure();
  return out;
}

}  // namespace

struct PendingShardGather::Impl {
  struct Piece {
    Packing packing;
    std::vector<at::Tensor> all;  // every rank's piece
    PendingWork work;
  };
  std::vector<Piece> pieces;
  std::vector<at::Tensor> tensors;
  int rank = 0;
};

PendingShardGather all_gather_shards_async(const std::vector<at::Tensor>& tensors, ProcessGroup& pg) {
  PendingShardGather g;
  g.impl_ = std::make_shared<PendingShardGather::Impl>();
  if (pg.world_size() == 1) return g;
  c10::NoGradGuard ng;
  g.impl_->tensors = tensors;
  g.impl_->rank = pg.rank();
  for (auto& [dtype, packing] : by_dtype(tensors, pg.world_size(), "all_gather_shards")) {
    if (packing.largest == 0) continue;
    PendingShardGather::Impl::Piece piece{packing, {}, {}};
    const auto opts = packing.tensors[0].options();
    at::Tensor mine = at::zeros({packing.largest}, opts);
    packing.pack(mine, pg.rank());
    for (int k = 0; k < pg.world_size(); ++k) piece.all.push_back(at::empty({packing.largest}, opts));
    piece.work = pg.all_gather_async(piece.all, mine);
    g.impl_->pieces.push_back(std::move(piece));
  }
  return g;
}

void PendingShardGather::wait() {
  if (!impl_ || impl_->pieces.empty()) return;
  c10::NoGradGuard ng;
  for (auto& piece : impl_->pieces) piece.work.wait();
  prepare_write(impl_->tensors);  // the gathered rows are written into the tensors (params) in place
  for (const auto& piece : impl_->pieces)
    for (size_t k = 0; k < piece.all.size(); ++k)
      if (static_cast<int>(k) != impl_->rank) piece.packing.unpack(piece.all[k], static_cast<int>(k));
  impl_->pieces.clear();
}

void all_gather_shards(const std::vector<at::Tensor>& tensors, ProcessGroup& pg) {
  all_gather_shards_async(tensors, pg).wait();
}

std::vector<at::Tensor> reduce_scatter_mean(const std::vector<at::Tensor>& full, ProcessGroup& pg) {
  c10::NoGradGuard ng;
  const int n = pg.world_size(), me = pg.rank();
  std::vector<at::Tensor> out(full.size());
  for (auto& [dtype, packing] : by_dtype(full, n, "reduce_scatter_mean")) {
    // Gloo cannot sum bfloat16: summed in float32, rounded once.
    const auto opts = packing.tensors[0].options().dtype(dtype == at::kBFloat16 ? at::kFloat : dtype);
    at::Tensor all = at::zeros({n * packing.largest}, opts), mine = at::empty({packing.largest}, opts);
    for (int k = 0; k < n; ++k) packing.pack(all.narrow(0, k * packing.largest, packing.largest), k);
    if (n > 1 && packing.largest > 0) pg.reduce_scatter_sum(mine, all);
    else if (n == 1) mine.copy_(all);
    mine.mul_(1.0 / n);
    int64_t off = 0;
    for (size_t j = 0; j < packing.tensors.size(); ++j) {
      const at::Tensor& t = packing.tensors[j];
      const ShardRange r = packing.rows(t, me);
      const int64_t m = r.size * Packing::row_numel(t);
      std::vector<int64_t> shape = t.sizes().vec();
      shape[0] = r.size;
      out[packing.index[j]] = mine.narrow(0, off, m).view(shape).to(t.scalar_type()).clone();
      off += m;
    }
  }
  return out;
}

}  // namespace nnx::distributed
