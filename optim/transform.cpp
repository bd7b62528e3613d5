#include "nnx/optim/transform.h"

#include <ATen/ATen.h>

#include <cmath>

#include "nnx/framework/error.h"
#include "nnx/framework/init.h"
#include "nnx/framework/state.h"
#include "nnx/framework/write_fence.h"

namespace nnx::optim {

ClipByGlobalNorm::ClipByGlobalNorm(double max_norm) : max_norm_(max_norm) {
  NNX_CHECK(max_norm > 0, "clip_by_global_norm: max_norm must be > 0, got ", max_norm);
}

void ClipByGlobalNorm::apply(UpdateContext& ctx) {
  if (ctx.grads.empty()) return;
  auto norms = at::_foreach_norm(ctx.grads, 2);
  at::Tensor total;
  if (ctx.mesh.size > 1) {
    // Sum of squares of this rank's shards (replicated params counted by rank 0), over ranks.
    NNX_INTERNAL_ASSERT(ctx.sharded && ctx.all_reduce_sum, "ZeRO-1 update without sharding information");
    std::vector<at::Tensor> counted;
    for (size_t i = 0; i < norms.size(); ++i)
      if ((*ctx.sharded)[i] || ctx.mesh.rank == 0) counted.push_back(norms[i].to(at::kDouble));
    std::vector<at::Tensor> sq = {counted.empty() ? at::zeros({}, at::TensorOptions().dtype(at::kDouble).device(ctx.grads[0].device())) : at::stack(counted).pow(2).sum()};
    ctx.all_reduce_sum(sq);
    total = sq[0].sqrt().to(at::kFloat);
  } else {
    total = at::stack(norms).to(at::kFloat).norm(2);
  }
  last_norm_ = total.item<double>();
  // torch.nn.utils.clip_grad_norm_: clip_coef = max_norm / (total + 1e-6), clamped to 1.
  at::Tensor coef = at::clamp_max(max_norm_ / (total + 1e-6), 1.0);
  ctx.grads = at::_foreach_mul(ctx.grads, coef.item<double>());  // new tensors: the caller's grads stay
}

nlohmann::json ClipByGlobalNorm::to_json() const {
  return {{"type", "clip_by_global_norm"}, {"max_norm", max_norm_}};
}

void AdamOptions::validate() const {
  NNX_CHECK(learning_rate(0) >= 0, "invalid learning_rate: ", learning_rate(0));
  NNX_CHECK(beta1 >= 0 && beta1 < 1, "invalid beta1: ", beta1, " (expected [0, 1))");
  NNX_CHECK(beta2 >= 0 && beta2 < 1, "invalid beta2: ", beta2, " (expected [0, 1))");
  NNX_CHECK(eps >= 0, "invalid eps: ", eps);
  NNX_CHECK(weight_decay.value_or(0) >= 0, "invalid weight_decay: ", weight_decay.value_or(0));
}

ScaleByAdam::ScaleByAdam(AdamOptions options) : options_(std::move(options)) {
  if (!options_.weight_decay) options_.weight_decay = options_.decoupled_weight_decay ? 0.01 : 0.0;
  options_.validate();
}

namespace {
bool low_precision(const at::Tensor& t) {
  return t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf;
}
at::Tensor zeros_like_fp32(const at::Tensor& p, bool fp32) {
  auto dtype = fp32 ? at::kFloat : p.scalar_type();
  at::Tensor z = init::zeros(p.sizes(), dtype);
  return z.is_meta() ? z : z.to(p.device());
}
}  // namespace

void Transform::add_param_state(Module& state, const std::string& path, size_t param, Variable value) {
  insert_variable(state, path, std::move(value));
  param_state_.emplace_back(path, param);
}

void ScaleByAdam::init(const std::vector<std::string>& paths, const std::vector<at::Tensor>& params,
                       Module& state) {
  for (size_t i = 0; i < paths.size(); ++i) {
    const at::Tensor& p = params[i];
    bool master = options_.master_weights && low_precision(p);
    add_param_state(state, "mu/" + paths[i], i, OptState(zeros_like_fp32(p, master)));
    add_param_state(state, "nu/" + paths[i], i, OptState(zeros_like_fp32(p, master)));
    if (options_.amsgrad) add_param_state(state, "nu_max/" + paths[i], i, OptState(zeros_like_fp32(p, master)));
    if (master) {
      at::Tensor m = p.is_meta() ? at::empty(p.sizes(), p.options().dtype(at::kFloat))
                                 : p.detach().to(at::kFloat).clone();
      add_param_state(state, "master/" + paths[i], i, OptState(m));
    }
  }
}

namespace {
// The variable at `path` below `root` (through ModuleDicts).
Variable& state_var(Module& root, const std::string& path) {
  auto parts = split_path(path);
  Module* node = &root;
  for (size_t i = 0; i + 1 < parts.size(); ++i) node = node->child_ptr(parts[i]).get();
  return node->variable(parts.back());
}

// One group of the Adam update (about 1 MiB of params): decay, moments, denominators, step.
struct AdamGroup {
  std::vector<at::Tensor> p, g, m, v, nu_max, decayed;  // nu_max: amsgrad only; decayed: AdamW's
};
struct AdamScalars {
  double lr, step_size, bc2_sqrt;
};

void adam_group_step(const AdamOptions& o, AdamGroup& group, const AdamScalars& k, at::Tensor& scratch) {
  auto &p = group.p, &g = group.g, &m = group.m, &v = group.v;
  // The write fence per group: a deferred checkpoint snapshot of these tensors must have read
  // them before they change; the groups after this one may still be copying meanwhile.
  prepare_write(p);
  prepare_write(m);
  prepare_write(v);
  prepare_write(group.nu_max);
  if (!group.decayed.empty()) at::_foreach_mul_(group.decayed, 1.0 - k.lr * *o.weight_decay);  // torch.optim.AdamW
  // exp_avg.mul_(beta1).add_(grad, alpha=1-beta1); exp_avg_sq.mul_(beta2).addcmul_(g, g, 1-beta2)
  at::_foreach_mul_(m, o.beta1);
  at::_foreach_add_(m, g, 1.0 - o.beta1);
  at::_foreach_mul_(v, o.beta2);
  at::_foreach_addcmul_(v, g, g, 1.0 - o.beta2);
  // sqrt(v) into views of one reused scratch buffer: no allocation (and no page faults) per step.
  std::vector<at::Tensor> src = o.amsgrad ? group.nu_max : v;
  if (o.amsgrad)
    for (size_t i = 0; i < src.size(); ++i) at::maximum_out(src[i], src[i], v[i]);
  int64_t total = 0;
  for (const auto& t : src) total += t.numel();
  if (!scratch.defined() || scratch.numel() < total || scratch.scalar_type() != src[0].scalar_type() ||
      scratch.device() != src[0].device())
    scratch = at::empty({total}, src[0].options());
  std::vector<at::Tensor> denom;
  int64_t off = 0;
  for (const auto& t : src) {
    at::Tensor d = scratch.narrow(0, off, t.numel()).view(t.sizes());
    at::sqrt_out(d, t);
    denom.push_back(d);
    off += t.numel();
  }
  // denom = sqrt(v) / sqrt(bias_correction2) + eps; p -= step_size * m / denom
  at::_foreach_div_(denom, k.bc2_sqrt);
  at::_foreach_add_(denom, o.eps);
  at::_foreach_addcdiv_(p, m, denom, -k.step_size);
}


// grads[i] += wd * params[i] where decay[i] (Adam's L2 decay), in one multi-tensor op.
void add_l2_decay(double wd, const std::vector<at::Tensor>& params, std::vector<at::Tensor>& grads,
                  const std::vector<bool>& decay) {
  std::vector<at::Tensor> dp, dg;
  std::vector<size_t> idx;
  for (size_t i = 0; i < params.size(); ++i)
    if (decay[i]) {
      dp.push_back(params[i]);
      dg.push_back(grads[i]);
      idx.push_back(i);
    }
  if (dp.empty()) return;
  auto decayed = at::_foreach_add(dg, dp, wd);
  for (size_t k = 0; k < idx.size(); ++k) grads[idx[k]] = decayed[k];
}

// The update of all params (`all.decayed` unused), group by group. The multi-tensor ops run over
// groups of about 1 MiB of params, so each group's params, grads, moments and denominators stay
// in cache across the eight passes (one pass over all tensors at once would stream every array
// from memory eight times).
void step_in_groups(const AdamOptions& o, const AdamGroup& all, const std::vector<bool>& decay, const AdamScalars& k,
                    at::Tensor& scratch) {
  constexpr int64_t kGroupBytes = int64_t(1) << 20;
  auto sub = [](const std::vector<at::Tensor>& v, size_t b, size_t e) {
    return std::vector<at::Tensor>(v.begin() + static_cast<std::ptrdiff_t>(b), v.begin() + static_cast<std::ptrdiff_t>(e));
  };
  const size_t n = all.p.size();
  for (size_t b = 0; b < n;) {
    size_t e = b;
    int64_t bytes = 0;
    while (e < n && (e == b || bytes + all.p[e].numel() * 4 <= kGroupBytes)) bytes += all.p[e++].numel() * 4;
    std::vector<at::Tensor> decayed;  // AdamW: the group's params that decay
    if (o.decoupled_weight_decay && *o.weight_decay != 0)
      for (size_t i = b; i < e; ++i)
        if (decay[i]) decayed.push_back(all.p[i]);
    AdamGroup group{sub(all.p, b, e), sub(all.g, b, e), sub(all.m, b, e), sub(all.v, b, e),
                    o.amsgrad ? sub(all.nu_max, b, e) : std::vector<at::Tensor>(), std::move(decayed)};
    adam_group_step(o, group, k, scratch);
    b = e;
  }
}

}  // namespace

// The state of each param of ctx.paths, found by path once per optimizer (a transform shared by
// two optimizers rebinds when the other one steps).
void ScaleByAdam::bind(const UpdateContext& ctx) {
  const auto& o = options_;
  slots_.assign(ctx.paths.size(), Slot{});
  for (size_t i = 0; i < ctx.paths.size(); ++i) {
    const std::string& path = ctx.paths[i];
    Slot& s = slots_[i];
    if (o.master_weights && low_precision(ctx.params[i])) s.master = state_var(ctx.state, "master/" + path);
    s.mu = state_var(ctx.state, "mu/" + path);
    s.nu = state_var(ctx.state, "nu/" + path);
    if (o.amsgrad) s.nu_max = state_var(ctx.state, "nu_max/" + path);
    s.decay = *o.weight_decay != 0 && o.weight_decay_mask(path, Param);
  }
  bound_state_ = &ctx.state;
  bound_paths_ = &ctx.paths;
}

void ScaleByAdam::apply(UpdateContext& ctx) {
  const auto& o = options_;
  const size_t n = ctx.paths.size();
  if (n == 0) return;
  const int64_t t = ctx.step + 1;  // PyTorch increments step before using it
  const double lr = o.learning_rate(ctx.step);
  const double bc1 = 1.0 - std::pow(o.beta1, static_cast<double>(t));
  const double bc2 = 1.0 - std::pow(o.beta2, static_cast<double>(t));
  const double step_size = lr / bc1;
  const double bc2_sqrt = std::sqrt(bc2);

  if (bound_state_ != &ctx.state || bound_paths_ != &ctx.paths || slots_.size() != n) bind(ctx);
  std::vector<at::Tensor> params, grads, mu, nu, nu_max, low_params;
  std::vector<bool> decay(n);
  for (size_t i = 0; i < n; ++i) {
    const Slot& s = slots_[i];
    at::Tensor p = ctx.params[i];
    at::Tensor g = ctx.grads[i];
    if (s.master.defined()) {
      low_params.push_back(p);
      p = s.master.value();
      g = g.to(at::kFloat);
    }
    params.push_back(p);
    grads.push_back(g);
    mu.push_back(s.mu.value());
    nu.push_back(s.nu.value());
    if (o.amsgrad) nu_max.push_back(s.nu_max.value());
    decay[i] = s.decay;
  }

  // Adam's L2 decay (grad + wd * param) reads the params only; AdamW's decoupled decay writes
  // them, so it runs per group, after the group's write fence.
  if (*o.weight_decay != 0 && !o.decoupled_weight_decay) add_l2_decay(*o.weight_decay, params, grads, decay);
  step_in_groups(o, AdamGroup{params, grads, mu, nu, nu_max, {}}, decay, AdamScalars{lr, step_size, bc2_sqrt}, scratch_);

  prepare_write(low_params);
  for (size_t i = 0, k = 0; i < n; ++i) {
    if (o.master_weights && low_precision(ctx.params[i])) low_params[k++].copy_(params[i]);
  }
}

nlohmann::json ScaleByAdam::to_json() const {
  const auto& o = options_;
  return {{"type", o.decoupled_weight_decay ? "adamw" : "adam"},
          {"learning_rate", o.learning_rate.to_json()},
          {"beta1", o.beta1},
          {"beta2", o.beta2},
          {"eps", o.eps},
          {"weight_decay", *o.weight_decay},
          {"amsgrad", o.amsgrad},
          {"weight_decay_mask", o.weight_decay_mask.description()}};
}

std::shared_ptr<Transform> adam(AdamOptions options) {
  options.decoupled_weight_decay = false;
  return std::make_shared<ScaleByAdam>(std::move(options));
}

std::shared_ptr<Transform> adamw(AdamOptions options) {
  options.decoupled_weight_decay = true;
  return std::make_shared<ScaleByAdam>(std::move(options));
}

std::shared_ptr<Transform> clip_by_global_norm(double max_norm) {
  return std::make_shared<ClipByGlobalNorm>(max_norm);
}

}  // namespace nnx::optim
