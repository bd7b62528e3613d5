#include "nnx/framework/gradient_reducer.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/utils/lambda_post_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <mutex>
#include <utility>

#include "nnx/framework/error.h"
#include "nnx/framework/graph.h"
#include "nnx/framework/write_fence.h"

namespace nnx::distributed {

struct GradientReducer::Shared {
  std::mutex mu;
  std::shared_ptr<ProcessGroup> pg;
  std::vector<at::Tensor> params;
  std::vector<std::vector<size_t>> buckets;  // param indices
  std::vector<size_t> bucket_of;
  // One step's state, reset by arm():
  bool armed = false;
  std::vector<size_t> missing;  // gradients a bucket still waits for
  size_t next_launch = 0;
  std::vector<at::Tensor> flat;
  std::vector<PendingWork> work;
  // Holding the accumulators keeps the hooks: a param's own reference to it is weak. (A
  // shared_ptr in libtorch 1.13, an intrusive_ptr in 2.x.)
  std::vector<decltype(torch::autograd::impl::grad_accumulator(std::declval<const at::Tensor&>()))> accumulators;

  at::Tensor grad_or_zeros(size_t i) const {
    const at::Tensor& g = params[i].grad();
    return g.defined() ? g : at::zeros_like(params[i]);
  }

  // Launches every complete bucket from next_launch on, in order.
  void launch_ready_locked(bool all) {
    c10::NoGradGuard ng;
    while (next_launch < buckets.size() && (all || missing[next_launch] == 0)) {
      std::vector<at::Tensor> views;
      for (size_t i : buckets[next_launch]) views.push_back(grad_or_zeros(i).reshape({-1}));
      at::Tensor f = at::cat(views);
      if (f.scalar_type() == at::kBFloat16) f = f.to(at::kFloat);  // Gloo cannot sum bfloat16
      flat[next_launch] = f;
      work[next_launch] = pg->all_reduce_sum_async(f);
      ++next_launch;
    }
  }

  void ready(size_t i) {
    std::lock_guard<std::mutex> lock(mu);
    if (!armed) return;
    const size_t b = bucket_of[i];
    if (missing[b] > 0 && --missing[b] == 0) launch_ready_locked(false);
  }
};

namespace {

// The model's Params that require grad, in reverse registration order.
std::vector<at::Tensor> reversed_params(const Module& model) {
  std::vector<at::Tensor> out;
  for (const auto& [path, vs] : state(model, Param))
    if (vs.value.requires_grad()) out.push_back(vs.value);
  std::reverse(out.begin(), out.end());
  return out;
}

}  // namespace

GradientReducer::GradientReducer(Module& model, std::shared_ptr<ProcessGroup> pg, int64_t bucket_bytes)
    : model_(model), pg_(std::move(pg)), bucket_bytes_(bucket_bytes) {
  hook(reversed_params(model_));
}

// A new Shared (the old one's hooks hold it weakly and go quiet with it), its buckets, and a
// post-hook on each Param's gradient accumulator.
void GradientReducer::hook(std::vector<at::Tensor> params) {
  NNX_CHECK(!params.empty(), "GradientReducer: the model has no Param that requires grad");
  shared_ = std::make_shared<Shared>();
  shared_->pg = pg_;
  shared_->params = std::move(params);
  int64_t bytes = 0;
  for (size_t i = 0; i < shared_->params.size(); ++i) {
    const at::Tensor& p = shared_->params[i];
    auto& bs = shared_->buckets;
    // The first bucket is small (1 MiB, DDP's first_bucket_bytes): its all-reduce starts after the
    // first layers of backward instead of a full bucket's worth.
    const int64_t cap = bs.size() == 1 ? std::min<int64_t>(int64_t(1) << 20, bucket_bytes_) : bucket_bytes_;
    if (bs.empty() || bytes >= cap || shared_->params[bs.back().front()].scalar_type() != p.scalar_type()) {
      bs.emplace_back();
      bytes = 0;
    }
    bs.back().push_back(i);
    bytes += p.numel() * static_cast<int64_t>(p.element_size());
    shared_->bucket_of.push_back(bs.size() - 1);
  }
  std::weak_ptr<Shared> weak = shared_;
  for (size_t i = 0; i < shared_->params.size(); ++i) {
    auto acc = torch::autograd::impl::grad_accumulator(shared_->params[i]);
    NNX_CHECK(acc != nullptr, "GradientReducer: a Param has no gradient accumulator");
    acc->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
        [weak, i](const torch::autograd::variable_list& outputs, const torch::autograd::variable_list&) {
          if (auto s = weak.lock()) s->ready(i);
          return outputs;
        }));
    shared_->accumulators.push_back(std::move(acc));
  }
}

GradientReducer::~GradientReducer() = default;

int64_t GradientReducer::num_buckets() const { return static_cast<int64_t>(shared_->buckets.size()); }

void GradientReducer::arm() {
  // A restore or update() may have put new tensors in the Params (Variable::set_value): their
  // accumulators have no hooks yet.
  std::vector<at::Tensor> now = reversed_params(model_);
  bool same = now.size() == shared_->params.size();
  for (size_t i = 0; same && i < now.size(); ++i) same = now[i].unsafeGetTensorImpl() == shared_->params[i].unsafeGetTensorImpl();
  if (!same) hook(std::move(now));
  std::lock_guard<std::mutex> lock(shared_->mu);
  Shared& s = *shared_;
  s.armed = true;
  s.next_launch = 0;
  s.missing.assign(s.buckets.size(), 0);
  for (size_t b = 0; b < s.buckets.size(); ++b) s.missing[b] = s.buckets[b].size();
  s.flat.assign(s.buckets.size(), at::Tensor());
  s.work.assign(s.buckets.size(), PendingWork());
}

void GradientReducer::finish() {
  Shared& s = *shared_;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    NNX_CHECK(s.armed, "GradientReducer::finish() without arm()");
    s.launch_ready_locked(/*all=*/true);
    s.armed = false;
  }
  c10::NoGradGuard ng;
  const double scale = 1.0 / s.pg->world_size();
  for (size_t b = 0; b < s.buckets.size(); ++b) {
    s.work[b].wait();
    s.flat[b].mul_(scale);
    int64_t off = 0;
    for (size_t i : s.buckets[b]) {
      at::Tensor& p = s.params[i];
      if (!p.grad().defined()) p.mutable_grad() = at::zeros_like(p);
      at::Tensor g = p.grad();
      prepare_write(g);  // a snapshot in flight may still read it
      g.copy_(s.flat[b].slice(0, off, off + g.numel()).view(g.sizes()));
      off += g.numel();
    }
    s.flat[b] = at::Tensor();
  }
}

}  // namespace nnx::distributed
