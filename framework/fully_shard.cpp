#include "nnx/framework/fully_shard.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <set>

#include "nnx/framework/distributed.h"
#include "nnx/framework/error.h"
#include "nnx/framework/graph.h"
#include "nnx/framework/module.h"
#include "nnx/framework/shard_collectives.h"
#include "nnx/framework/sharding.h"

namespace nnx::distributed {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// One param: its variable (holding this rank's rows between uses) and its global shape.
struct ShardedParam {
  std::string path;
  Variable var;
  std::vector<int64_t> full_shape;
  bool sharded = true;  // false: a 0-d param, kept whole on every rank
};

std::vector<at::Tensor> values_of(const std::vector<ShardedParam>& ps) {
  std::vector<at::Tensor> out;
  for (const auto& p : ps) out.push_back(p.var.value());
  return out;
}

// The full tensors of `ps`, being gathered from every rank's rows: this rank's rows are in, the
// others arrive by pending.wait().
struct Gathering {
  std::vector<at::Tensor> full;
  PendingShardGather pending;
  bool in_backward = false;  // started by a unit's backward (for the unit before it)
};

Gathering start_gather(const std::vector<ShardedParam>& ps, ProcessGroup& pg) {
  c10::NoGradGuard no_grad;
  Gathering g;
  std::vector<at::Tensor> sharded;
  for (const auto& p : ps) {
    const at::Tensor& shard = p.var.value();
    if (!p.sharded) {
      g.full.push_back(shard.detach().clone());
      continue;
    }
    at::Tensor f = at::empty(p.full_shape, shard.options());
    const ShardRange r = shard_range(p.full_shape[0], pg.rank(), pg.world_size());
    if (r.size > 0) f.narrow(0, r.start, r.size).copy_(shard);
    g.full.push_back(f);
    sharded.push_back(f);
  }
  if (!sharded.empty()) g.pending = all_gather_shards_async(sharded, pg);
  return g;
}

// Each full gradient's mean over the ranks, as this rank's rows of it (reduce-scatter; the whole
// of a 0-d one, all-reduced). An unused param's gradient is zero.
std::vector<at::Tensor> reduce_to_shards(std::vector<at::Tensor> grads, const std::vector<ShardedParam>& ps,
                                         ProcessGroup& pg) {
  c10::NoGradGuard no_grad;
  std::vector<at::Tensor> rows_of;
  State whole;
  for (size_t i = 0; i < ps.size(); ++i) {
    if (!grads[i].defined()) grads[i] = at::zeros(ps[i].full_shape, ps[i].var.value().options());
    if (ps[i].sharded) rows_of.push_back(grads[i]);
    else whole.insert("g" + std::to_string(i), {Param, grads[i], {}});
  }
  if (!whole.empty()) all_reduce_mean(whole, pg);
  std::vector<at::Tensor> rows = reduce_scatter_mean(rows_of, pg), out;
  size_t next = 0;
  for (size_t i = 0; i < ps.size(); ++i) out.push_back(ps[i].sharded ? rows[next++] : grads[i]);
  return out;
}

// (Not named bind: argument-dependent lookup would find std::bind for these std::vector arguments.)
void set_values(const std::vector<ShardedParam>& ps, const std::vector<at::Tensor>& values) {
  for (size_t i = 0; i < ps.size(); ++i) const_cast<Variable&>(ps[i].var).set_value(values[i]);
}

}  // namespace

class FullyShardedUnit;

// What the units and the root share. Owned by FullyShardedModel and by every unit (the model
// tree holds the units), so a graph built by forward() outlives neither; it owns no module.
struct FullyShardedContext {
  std::shared_ptr<ProcessGroup> pg;
  std::vector<ShardedParam> root_params;  // gathered once per forward()
  std::vector<Variable> rng_counts;       // every Rngs count of the model: rewound for a recompute
  bool prefetch = true;
  // The units in the order this forward ran them, and the previous forward's: the next unit to
  // prefetch is the one that followed last time (FSDP2 records the order the same way).
  std::vector<FullyShardedUnit*> order, last_order;
  std::map<FullyShardedUnit*, Gathering> prefetched;  // started, not yet taken
  GatherStats stats;

  std::vector<at::Tensor> rng_state() const {
    std::vector<at::Tensor> out;
    for (const auto& v : rng_counts) out.push_back(v.value().clone());
    return out;
  }
  void set_rng_state(const std::vector<at::Tensor>& s) {
    for (size_t i = 0; i < rng_counts.size(); ++i) rng_counts[i].set_value(s[i].clone());
  }
  void start_prefetch(FullyShardedUnit* u, bool in_backward);
  std::vector<at::Tensor> take(FullyShardedUnit* u, bool in_backward);
  std::vector<at::Tensor> gather_root();
  size_t units = 0;  // how many there are
  // A new forward: the order recorded so far becomes the last pass's.
  void begin_pass() {
    last_order.swap(order);
    order.clear();
  }
  // Gathers the last pass left unused are waited for and dropped.
  void begin_forward() {
    for (auto& [u, g] : prefetched) g.pending.wait();
    prefetched.clear();
    begin_pass();
  }
};

// The wrapper that takes a unit's place in its parent: the same slots (so the same paths,
// GraphDef and state), its forward through UnitFunction.
class FullyShardedUnit : public ModuleBase<FullyShardedUnit> {
 public:
  FullyShardedUnit(std::shared_ptr<Module> inner, std::vector<ShardedParam> params, std::shared_ptr<FullyShardedContext> ctx)
      : inner_(std::move(inner)), params_(std::move(params)), ctx_(std::move(ctx)) {
    for (const auto& s : inner_->slots()) {
      if (s.child)
        register_module(s.name, s.child);
      else
        register_variable(s.name, s.variable);
    }
    for (auto& [path, var] : inner_->named_variables())
      if (var.kind().is_a(BatchStat)) stats_.push_back(var);
  }
  std::string type_name() const override { return inner_->type_name(); }
  nlohmann::json config() const override { return inner_->config(); }
  at::Tensor forward(const at::Tensor& x) override;

  Module& inner() const { return *inner_; }
  const std::vector<ShardedParam>& params() const { return params_; }
  FullyShardedContext& context() const { return *ctx_; }
  std::vector<at::Tensor> stats() const {
    std::vector<at::Tensor> out;
    for (const auto& v : stats_) out.push_back(v.value().clone());  // BatchNorm updates them in place
    return out;
  }
  void set_stats(const std::vector<at::Tensor>& values) {
    for (size_t i = 0; i < stats_.size(); ++i) stats_[i].set_value(values[i]);
  }

 private:
  std::shared_ptr<Module> inner_;
  std::vector<ShardedParam> params_;
  std::shared_ptr<FullyShardedContext> ctx_;
  std::vector<Variable> stats_;  // BatchStats: a recompute must not update them twice
};

void FullyShardedContext::start_prefetch(FullyShardedUnit* u, bool in_backward) {
  if (!prefetch || prefetched.count(u)) return;
  Gathering g = start_gather(u->params(), *pg);
  g.in_backward = in_backward;
  prefetched.emplace(u, std::move(g));
}

// `u`'s full params: prefetched, or gathered now. The time until they are here is the gather
// time this rank did not hide under compute. A prefetch is used only by the very next unit, in
// the phase that started it: anything else may have crossed an optimizer step (a model run
// without FullyShardedModel::forward() starts no pass), so it is waited for and dropped. These
// decisions follow the program, not the data, so every rank makes the same ones.
std::vector<at::Tensor> FullyShardedContext::take(FullyShardedUnit* u, bool in_backward) {
  const auto t0 = std::chrono::steady_clock::now();
  Gathering g;
  bool early = false;
  for (auto it = prefetched.begin(); it != prefetched.end(); it = prefetched.erase(it)) {
    if (it->first == u && it->second.in_backward == in_backward) {
      g = std::move(it->second);
      early = true;
    } else {
      it->second.pending.wait();
    }
  }
  if (!early) g = start_gather(u->params(), *pg);
  g.pending.wait();
  stats.gathers += 1;
  stats.prefetched += early ? 1 : 0;
  stats.wait_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return std::move(g.full);
}

std::vector<at::Tensor> FullyShardedContext::gather_root() {
  const auto t0 = std::chrono::steady_clock::now();
  Gathering g = start_gather(root_params, *pg);
  g.pending.wait();
  stats.gathers += 1;
  stats.wait_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return std::move(g.full);
}

namespace {

// Forward: gather, run the unit without a graph, free. Backward: gather again, recompute with
// the same Rngs counts, take the gradients, reduce them into the shards.
struct UnitFunction : torch::autograd::Function<UnitFunction> {
  static at::Tensor forward(AutogradContext* ctx, FullyShardedUnit* unit, const at::Tensor& x, at::TensorList shards) {
    FullyShardedContext& c = unit->context();
    ctx->saved_data["unit"] = static_cast<int64_t>(reinterpret_cast<intptr_t>(unit));
    ctx->saved_data["rng"] = c.rng_state();
    ctx->save_for_backward({x});
    // A model run without FullyShardedModel::forward() never starts a pass: bound the record.
    if (c.order.size() >= 2 * c.units) c.begin_pass();
    const size_t pos = c.order.size();
    c.order.push_back(unit);
    ctx->saved_data["pos"] = static_cast<int64_t>(pos);
    std::vector<at::Tensor> full = c.take(unit, /*in_backward=*/false);
    // The unit that ran after this one last time, gathered while this one computes.
    if (pos + 1 < c.last_order.size() && c.last_order[pos] == unit) c.start_prefetch(c.last_order[pos + 1], false);
    set_values(unit->params(), full);
    at::Tensor out;
    try {
      out = unit->inner().forward(x);
    } catch (...) {
      set_values(unit->params(), std::vector<at::Tensor>(shards.begin(), shards.end()));
      throw;
    }
    set_values(unit->params(), std::vector<at::Tensor>(shards.begin(), shards.end()));
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    auto* unit = reinterpret_cast<FullyShardedUnit*>(static_cast<intptr_t>(ctx->saved_data["unit"].toInt()));
    FullyShardedContext& c = unit->context();
    const at::Tensor x = ctx->get_saved_variables()[0];
    const std::vector<at::Tensor> shards = values_of(unit->params());
    const std::vector<at::Tensor> rng_now = c.rng_state(), stats_now = unit->stats();
    c.set_rng_state(ctx->saved_data["rng"].toTensorVector());
    std::vector<at::Tensor> full = c.take(unit, /*in_backward=*/true);
    // Backward runs the units in reverse: the one before this one is gathered while it computes.
    const auto pos = static_cast<size_t>(ctx->saved_data["pos"].toInt());
    if (pos > 0 && pos < c.order.size() && c.order[pos] == unit) c.start_prefetch(c.order[pos - 1], true);
    for (auto& f : full) f.requires_grad_(true);
    at::Tensor xin = x.detach().requires_grad_(x.requires_grad());
    set_values(unit->params(), full);
    at::Tensor out;
    try {
      at::AutoGradMode grad(true);
      out = unit->inner().forward(xin);
    } catch (...) {
      set_values(unit->params(), shards);
      throw;
    }
    set_values(unit->params(), shards);
    unit->set_stats(stats_now);
    c.set_rng_state(rng_now);
    variable_list inputs = full;
    if (xin.requires_grad()) inputs.insert(inputs.begin(), xin);
    variable_list g = torch::autograd::grad({out}, inputs, {grad_out[0]}, /*retain_graph=*/false,
                                            /*create_graph=*/false, /*allow_unused=*/true);
    at::Tensor gx = xin.requires_grad() ? g[0] : at::Tensor();
    std::vector<at::Tensor> gp(g.begin() + (xin.requires_grad() ? 1 : 0), g.end());
    variable_list result = {at::Tensor(), gx};
    for (auto& s : reduce_to_shards(std::move(gp), unit->params(), *c.pg)) result.push_back(std::move(s));
    return result;
  }
};

// The root's own params: gathered for one forward(); the graph keeps the full tensors until
// backward, which reduces their gradients into the shards.
struct GatherFunction : torch::autograd::Function<GatherFunction> {
  static variable_list forward(AutogradContext* ctx, FullyShardedContext* c, at::TensorList) {
    ctx->saved_data["context"] = static_cast<int64_t>(reinterpret_cast<intptr_t>(c));
    return c->gather_root();
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto* c = reinterpret_cast<FullyShardedContext*>(static_cast<intptr_t>(ctx->saved_data["context"].toInt()));
    variable_list result = {at::Tensor()};
    for (auto& s : reduce_to_shards(std::move(grads), c->root_params, *c->pg)) result.push_back(std::move(s));
    return result;
  }
};

}  // namespace

at::Tensor FullyShardedUnit::forward(const at::Tensor& x) {
  inner_->train(is_training());
  const std::vector<at::Tensor> shards = values_of(params_);
  return UnitFunction::apply(this, x, at::TensorList(shards));  // a TensorList: each shard an input
}

namespace {

bool is_container(const Module& m) {
  const std::string t = m.type_name();
  return t == "Sequential" || t == "ModuleList" || t == "ModuleDict";
}

bool has_param(const Module& m) {
  for (const auto& [path, var] : m.named_variables())
    if (var.kind().is_a(Param)) return true;
  return false;
}

// The default units below `m` at `path` (see FullyShardOptions::units).
void default_units(const Module& m, const std::string& path, std::vector<std::string>& out) {
  for (const auto& s : m.slots()) {
    if (!s.child) continue;
    const std::string p = path.empty() ? s.name : path + "/" + s.name;
    if (is_container(*s.child))
      default_units(*s.child, p, out);
    else if (s.child->type_name() != "Embedding" && has_param(*s.child))
      out.push_back(p);
  }
}

// The parent of the module at `path` below `root`, and its slot name; throws naming the path.
std::pair<Module*, std::string> parent_of(Module& root, const std::string& path) {
  NNX_CHECK(!path.empty(), "FullyShardOptions.units: an empty path (the root is never a unit)");
  Module* node = &root;
  std::string rest = path, name;
  for (size_t slash; (slash = rest.find('/')) != std::string::npos; rest = rest.substr(slash + 1)) {
    name = rest.substr(0, slash);
    NNX_CHECK(node->has_child(name), "FullyShardOptions.units: '", path, "' names no module (no '", name, "')");
    node = node->child_ptr(name).get();
  }
  NNX_CHECK(node->has_child(rest), "FullyShardOptions.units: '", path, "' names no module");
  return {node, rest};
}

// The units' paths: given or the defaults, each naming a module with params, none overlapping;
// every param floating-point.
std::vector<std::string> checked_units(Module& root, std::vector<std::string> units) {
  for (auto& [path, var] : root.named_variables())
    NNX_CHECK(!var.kind().is_a(Param) || var.value().is_floating_point(), "FullyShardedModel: param '", path,
              "' is ", var.value().scalar_type(), ", not floating point");
  if (units.empty()) default_units(root, "", units);
  for (size_t i = 0; i < units.size(); ++i) {
    auto [parent, name] = parent_of(root, units[i]);
    NNX_CHECK(has_param(*parent->child_ptr(name)), "FullyShardOptions.units: '", units[i], "' holds no param");
    for (size_t j = 0; j < units.size(); ++j)
      NNX_CHECK(i == j || (units[j].rfind(units[i] + "/", 0) != 0 && units[i] != units[j]),
                "FullyShardOptions.units: '", units[j], "' overlaps '", units[i], "'");
  }
  return units;
}

}  // namespace

FullyShardedModel::FullyShardedModel(std::shared_ptr<Module> model, std::shared_ptr<ProcessGroup> pg,
                                     FullyShardOptions options)
    : model_(std::move(model)), ctx_(std::make_shared<FullyShardedContext>()) {
  NNX_CHECK(model_ != nullptr && pg != nullptr, "FullyShardedModel needs a model and a process group");
  ctx_->pg = std::move(pg);
  ctx_->prefetch = options.prefetch;
  Module& root = *model_;
  unit_paths_ = checked_units(root, options.units);  // before anything changes
  // Every param, sharded in place: this rank's rows, annotated.
  const Mesh mesh{ctx_->pg->rank(), ctx_->pg->world_size()};
  std::vector<ShardedParam> all;
  for (auto& [path, var] : root.named_variables()) {
    if (var.kind().is_a(RngCount)) ctx_->rng_counts.push_back(var);
    if (!var.kind().is_a(Param)) continue;
    ShardedParam p{path, var, var.value().sizes().vec(), var.value().dim() >= 1};
    if (p.sharded) {
      const PartitionSpec spec = PartitionSpec::sharded(0, var.value().dim());
      at::Tensor shard = shard_of(var.value().detach(), spec, mesh).clone();
      var.set_value(shard.requires_grad_(true));
      set_partition_spec(var, spec);
    }
    all.push_back(std::move(p));
  }
  // Each unit takes the params below its path; the rest stay the root's.
  std::set<std::string> taken;
  for (const auto& u : unit_paths_) {
    auto [parent, name] = parent_of(root, u);
    std::vector<ShardedParam> mine;
    for (const auto& p : all)
      if (p.path.rfind(u + "/", 0) == 0) {
        mine.push_back(p);
        taken.insert(p.path);
      }
    parent->rebind_child(name, std::make_shared<FullyShardedUnit>(parent->child_ptr(name), std::move(mine), ctx_));
  }
  for (const auto& p : all)
    if (!taken.count(p.path)) ctx_->root_params.push_back(p);
  ctx_->units = unit_paths_.size();
}

FullyShardedModel::~FullyShardedModel() = default;

at::Tensor FullyShardedModel::forward(const at::Tensor& x) {
  ctx_->begin_forward();
  if (ctx_->root_params.empty()) return model_->forward(x);
  const std::vector<at::Tensor> shards = values_of(ctx_->root_params);
  set_values(ctx_->root_params, GatherFunction::apply(ctx_.get(), at::TensorList(shards)));
  at::Tensor out;
  try {
    out = model_->forward(x);
  } catch (...) {
    set_values(ctx_->root_params, shards);
    throw;
  }
  set_values(ctx_->root_params, shards);
  return out;
}

std::vector<std::string> FullyShardedModel::unit_paths() const { return unit_paths_; }

GatherStats FullyShardedModel::gather_stats() const { return ctx_->stats; }

std::vector<std::string> FullyShardedModel::resolve_units(Module& model, const std::vector<std::string>& units) {
  return checked_units(model, units);
}

Module& FullyShardedModel::model() const { return *model_; }

}  // namespace nnx::distributed
