#include "nnx/optim/optimizer.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "nnx/framework/graph.h"
#include "nnx/framework/layers.h"
#include "test_util.h"

using namespace nnx;
using namespace nnx::optim;

namespace {
// The 4-8-3 MLP of tests/golden/make_golden.py (params only matter by path and shape).
struct Mlp : ModuleBase<Mlp> {
  explicit Mlp(Rngs& rngs, bool reversed = false) {
    if (reversed) {  // same paths, different registration order
      register_module("fc2", std::make_shared<Linear>(8, 3, rngs));
      register_module("fc1", std::make_shared<Linear>(4, 8, rngs));
    } else {
      register_module("fc1", std::make_shared<Linear>(4, 8, rngs));
      register_module("fc2", std::make_shared<Linear>(8, 3, rngs));
    }
  }
  at::Tensor forward(const at::Tensor& x) override {
    return child("fc2").forward(at::relu(child("fc1").forward(x)));
  }
};

State golden_state(const nlohmann::json& j) {
  State s;
  for (const char* p : {"fc1/kernel", "fc1/bias", "fc2/kernel", "fc2/bias"})
    s.insert(p, {Param, test::golden_tensor(j.at(p)), {}});
  return s;
}

std::shared_ptr<Transform> make_tx(const nlohmann::json& o, bool adamw_case) {
  AdamOptions opts;
  opts.learning_rate = o.at("lr").get<double>();
  // The cases give PyTorch's keyword arguments; an absent one is PyTorch's default, as here.
  if (o.contains("weight_decay")) opts.weight_decay = o["weight_decay"].get<double>();
  if (o.contains("amsgrad")) opts.amsgrad = o["amsgrad"];
  if (o.contains("eps")) opts.eps = o["eps"];
  if (o.contains("betas")) {
    opts.beta1 = o["betas"][0];
    opts.beta2 = o["betas"][1];
  }
  return adamw_case ? adamw(opts) : adam(opts);
}

// Largest |a-b| / max(|b|, 1e-3) over all elements.
double max_rel(const at::Tensor& a, const at::Tensor& b) {
  return ((a - b).abs() / b.abs().clamp_min(1e-3)).max().item<double>();
}
}  // namespace

TEST(Optimizer, TwoHundredStepsMatchTorchAdamAndAdamW) {
  auto g = test::load_golden("adam.json");
  for (auto it = g["cases"].begin(); it != g["cases"].end(); ++it) {
    Rngs rngs(0);
    auto model = std::make_shared<Mlp>(rngs);
    update(*model, golden_state(g["init"]));
    Optimizer opt(model, {make_tx(it.value()["options"], it.key() == "adamw")});
    for (const auto& step : g["grads"]) opt.update(golden_state(step));
    EXPECT_EQ(opt.step_count(), 200);
    State want = golden_state(it.value()["final"]);
    for (const auto& [p, vs] : state(*model)) {
      double rel = max_rel(vs.value, want.at(p).value);
      EXPECT_LT(rel, 1e-6) << it.key() << " " << p;
    }
    for (const auto& [p, vs] : golden_state(it.value()["exp_avg"]))
      EXPECT_LT(max_rel(state(opt).at("mu/" + p).value, vs.value), 1e-5) << it.key() << " mu " << p;
  }
}

TEST(Optimizer, StateIsKeyedByPathAndWorksAsModuleState) {
  Rngs rngs(0);
  auto model = std::make_shared<Mlp>(rngs);
  AdamOptions o;
  o.amsgrad = true;
  Optimizer opt(model, {clip_by_global_norm(1.0), adam(o)});
  State s = state(opt);
  EXPECT_EQ(s.paths().front(), "step");
  EXPECT_TRUE(s.contains("mu/fc1/kernel"));
  EXPECT_TRUE(s.contains("nu/fc2/bias"));
  EXPECT_TRUE(s.contains("nu_max/fc2/bias"));
  for (const auto& [p, vs] : s) EXPECT_EQ(vs.kind, OptState) << p;
  EXPECT_EQ(s.at("step").value.scalar_type(), at::kLong);
  auto [gd, st] = split(opt);
  EXPECT_TRUE(st.equal(s));
}

TEST(Optimizer, SaveStepLoadStepEqualsUninterruptedWithNegativeControl) {
  auto grads_at = [](int t) {
    State g;
    g.insert("fc1/kernel", {Param, at::sin(at::arange(32, at::kFloat).reshape({4, 8}) * (t + 1)), {}});
    g.insert("fc1/bias", {Param, at::cos(at::arange(8, at::kFloat) * (t + 2)), {}});
    g.insert("fc2/kernel", {Param, at::sin(at::arange(24, at::kFloat).reshape({8, 3}) + t), {}});
    g.insert("fc2/bias", {Param, at::full({3}, 0.1 * t), {}});
    return g;
  };
  AdamOptions o;
  o.learning_rate = warmup_cosine(1e-2, 3, 20);
  o.weight_decay = 0.05;
  Rngs r1(1);
  auto m1 = std::make_shared<Mlp>(r1);
  Optimizer o1(m1, {adamw(o)});
  for (int t = 0; t < 5; ++t) o1.update(grads_at(t));
  State saved_model = state(*m1).clone(), saved_opt = state(o1).clone();
  for (int t = 5; t < 10; ++t) o1.update(grads_at(t));

  // Restore into a fresh model and optimizer whose registration order differs.
  Rngs r2(2);
  auto m2 = std::make_shared<Mlp>(r2, /*reversed=*/true);
  Optimizer o2(m2, {adamw(o)});
  update(*m2, saved_model);
  update(o2, saved_opt);
  EXPECT_EQ(o2.step_count(), 5);
  for (int t = 5; t < 10; ++t) o2.update(grads_at(t));
  for (const auto& [p, vs] : state(*m1)) EXPECT_TRUE(at::equal(vs.value, state(*m2).at(p).value)) << p;
  EXPECT_TRUE(state(o1).at("nu/fc1/kernel").value.equal(state(o2).at("nu/fc1/kernel").value));

  // Negative control: same params, fresh optimizer state (step 0: other bias correction).
  Rngs r3(3);
  auto m3 = std::make_shared<Mlp>(r3);
  Optimizer o3(m3, {adamw(o)});
  update(*m3, saved_model);
  for (int t = 5; t < 10; ++t) o3.update(grads_at(t));
  EXPECT_FALSE(at::equal(state(*m1).at("fc1/kernel").value, state(*m3).at("fc1/kernel").value));
}

TEST(Optimizer, StepCountDrivesBiasCorrection) {
  // With constant gradient g, Adam's first update moves each param by lr * sign(g) (bias
  // corrected); with a restored step of 1000 and zero moments it moves by much less.
  Rngs rngs(0);
  auto model = std::make_shared<Mlp>(rngs);
  AdamOptions o;
  o.learning_rate = 0.1;
  Optimizer opt(model, {adam(o)});
  State before = state(*model).clone();
  State g;
  for (const auto& [p, vs] : before) g.insert(p, {Param, at::ones_like(vs.value), {}});
  opt.update(g);
  EXPECT_NEAR((before.at("fc1/bias").value - state(*model).at("fc1/bias").value).mean().item<double>(), 0.1, 1e-5);
  State s = state(opt).clone();
  s.at("step").value.fill_(1000);
  for (auto& [p, vs] : s)
    if (p != "step") vs.value.zero_();
  update(opt, s);
  State mid = state(*model).clone();
  opt.update(g);
  double moved = (mid.at("fc1/bias").value - state(*model).at("fc1/bias").value).mean().item<double>();
  // bc1 = 1 - 0.9^1001 ~ 1, bc2 ~ 0.63: step = 0.1 * 0.1 / sqrt(0.001 / 0.632) ~ 0.25
  double bc2 = 1 - std::pow(0.999, 1001);
  double want = 0.1 * 0.1 / (std::sqrt(0.001) / std::sqrt(bc2) + 1e-8);
  EXPECT_NEAR(moved, want, 1e-4);
  EXPECT_EQ(opt.step_count(), 1001);
}

TEST(Optimizer, MissingOrExtraGradientPathIsAnErrorNamingIt) {
  Rngs rngs(0);
  auto model = std::make_shared<Mlp>(rngs);
  Optimizer opt(model, {adam()});
  State g = grads(*model);
  g.erase("fc2/bias");
  try {
    opt.update(g);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("fc2/bias"), std::string::npos);
  }
  State extra = grads(*model);
  extra.insert("fc3/bias", {Param, at::zeros({1}), {}});
  try {
    opt.update(extra);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("fc3/bias"), std::string::npos);
  }
  EXPECT_EQ(opt.step_count(), 0);
}

TEST(Optimizer, WeightDecayMaskSkipsBiases) {
  Rngs rngs(0);
  auto model = std::make_shared<Mlp>(rngs);
  AdamOptions o;
  o.weight_decay = 0.5;
  o.learning_rate = 0.1;
  o.weight_decay_mask = Not(PathContains("bias"));
  Optimizer opt(model, {adamw(o)});
  State before = state(*model).clone();
  State zero;
  for (const auto& [p, vs] : before) zero.insert(p, {Param, at::zeros_like(vs.value), {}});
  opt.update(zero);  // zero grads: only decay moves params
  EXPECT_TRUE(at::equal(state(*model).at("fc1/bias").value, before.at("fc1/bias").value));
  EXPECT_TRUE(at::allclose(state(*model).at("fc1/kernel").value, before.at("fc1/kernel").value * (1 - 0.05)));
}

TEST(Optimizer, MixedPrecisionKeepsFp32MasterWeights) {
  Rngs rngs(0);
  auto model = std::make_shared<Mlp>(rngs);
  State fp32 = state(*model).clone();
  model->to(at::kBFloat16);
  Optimizer opt(model, {adam()});
  State s = state(opt);
  EXPECT_EQ(s.at("master/fc1/kernel").value.scalar_type(), at::kFloat);
  EXPECT_EQ(s.at("mu/fc1/kernel").value.scalar_type(), at::kFloat);
  State g;
  for (const auto& [p, vs] : state(*model)) g.insert(p, {Param, at::full_like(vs.value, 1e-3), {}});
  for (int i = 0; i < 3; ++i) opt.update(g);
  auto master = state(opt).at("master/fc1/kernel").value;
  EXPECT_TRUE(at::equal(state(*model).at("fc1/kernel").value, master.to(at::kBFloat16)));
  // The master accumulates changes smaller than bf16's resolution.
  EXPECT_FALSE(at::equal(master, master.to(at::kBFloat16).to(at::kFloat)));
}

TEST(Optimizer, EvalShapeGivesAbstractOptimizerTemplate) {
  auto pair = eval_shape([] {
    Rngs rngs(0);
    auto m = std::make_shared<Mlp>(rngs);
    return std::make_pair(m, std::make_shared<Optimizer>(m, std::vector<std::shared_ptr<Transform>>{adam()}));
  });
  State t = state(*pair.second);
  EXPECT_TRUE(t.at("step").value.is_meta());
  EXPECT_TRUE(t.at("mu/fc1/kernel").value.is_meta());
  EXPECT_EQ(t.at("nu/fc2/kernel").value.sizes(), (std::vector<int64_t>{8, 3}));
}

namespace {
// A stage with state at "ema/mu/<path>" shaped like what it is given (or like the whole param).
struct Ema : Transform {
  bool whole = false;
  void init(const std::vector<std::string>& paths, const std::vector<at::Tensor>& params, Module& state) override {
    for (size_t i = 0; i < paths.size(); ++i) {
      std::vector<int64_t> shape = params[i].sizes().vec();
      if (whole && !shape.empty()) shape[0] = params[i].dim() ? shape[0] * 3 : shape[0];
      add_param_state(state, "ema/mu/" + paths[i], i, OptState(at::zeros(shape)));
    }
  }
  void apply(UpdateContext&) override {}
  nlohmann::json to_json() const override { return {{"type", "ema"}}; }
};
}  // namespace

TEST(Optimizer, ZeroOneShardsStateRowsAndAnnotatesItEvenUnderEvalShape) {
  // Rank 1 of 3: fc1/kernel [4, 8] holds rows [2, 3) (array_split: 2, 1, 1), fc2/bias [3] row [1, 2).
  auto pair = eval_shape([] {
    Rngs rngs(0);
    auto m = std::make_shared<Mlp>(rngs);
    return std::make_pair(m, std::make_shared<Optimizer>(m, std::vector<std::shared_ptr<Transform>>{adam(), std::make_shared<Ema>()},
                                                         Param, Mesh{1, 3}));
  });
  State t = state(*pair.second);
  EXPECT_EQ(t.at("mu/fc1/kernel").value.sizes(), (std::vector<int64_t>{1, 8}));
  EXPECT_EQ(t.at("nu/fc2/bias").value.sizes(), (std::vector<int64_t>{1}));
  EXPECT_EQ(t.at("ema/mu/fc1/kernel").value.sizes(), (std::vector<int64_t>{1, 8}));
  for (const char* p : {"mu/fc1/kernel", "nu/fc2/bias", "ema/mu/fc2/kernel"})
    EXPECT_EQ(get_partition_spec(t.at(p).metadata).sharded_dim(), 0) << p;
  EXPECT_TRUE(get_partition_spec(t.at("step").metadata).replicated());
  // An update without a process group is a clear error, not a wrong step.
  Rngs rngs(0);
  auto m = std::make_shared<Mlp>(rngs);
  Optimizer o(m, {adam()}, Param, Mesh{0, 2});
  State g = state(*m, Param).clone();
  try {
    o.update(g);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("call set_process_group() before update()"), std::string::npos) << e.what();
  }
  // State a stage shapes like something other than this rank's shard cannot be sharded safely.
  auto bad = std::make_shared<Ema>();
  bad->whole = true;
  EXPECT_THROW(Optimizer(m, {bad}, Param, Mesh{0, 2}), Error);
  EXPECT_THROW(Optimizer(m, {adam()}, Param, Mesh{2, 2}), Error);
  // Per-param state registered without add_param_state has no param to be sharded as: under
  // ZeRO an error naming it (it would be saved as replicated); without ZeRO it is fine.
  struct Loose : Transform {
    void init(const std::vector<std::string>& paths, const std::vector<at::Tensor>& params, Module& state) override {
      insert_variable(state, "loose/" + paths[0], OptState(at::zeros(params[0].sizes())));
    }
    void apply(UpdateContext&) override {}
    nlohmann::json to_json() const override { return {{"type", "loose"}}; }
  };
  EXPECT_NO_THROW(Optimizer(m, {adam(), std::make_shared<Loose>()}));
  try {
    Optimizer(m, {adam(), std::make_shared<Loose>()}, Param, Mesh{0, 2});
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("state 'loose/fc1/kernel' was not registered with Transform::add_param_state"),
              std::string::npos) << e.what();
  }
}

// Flax's optimizer_test (sharding propagation): the state of a param annotated with a
// PartitionSpec carries the param's annotation; the state of a replicated param carries none.
TEST(Optimizer, MomentsCarryTheirParamsPartitionSpec) {
  Rngs rngs(0);
  auto m = std::make_shared<Mlp>(rngs);
  const auto spec = PartitionSpec::sharded(1, 2);
  set_partition_spec(m->child("fc1").variable("kernel"), spec);
  optim::AdamOptions ao;
  ao.amsgrad = true;
  Optimizer o(m, {adam(ao), std::make_shared<Ema>()}, Param);
  State t = state(o);
  for (const char* p : {"mu/fc1/kernel", "nu/fc1/kernel", "nu_max/fc1/kernel", "ema/mu/fc1/kernel"})
    EXPECT_EQ(get_partition_spec(t.at(p).metadata), spec) << p;
  for (const char* p : {"mu/fc1/bias", "nu/fc2/kernel", "step"}) EXPECT_TRUE(get_partition_spec(t.at(p).metadata).replicated()) << p;
}

// ScaleByAdam binds each param's state once; what a step reads must still follow the
// optimizer it steps (a transform shared by two optimizers) and a restore into the state
// (update() replaces values through the same variables).
TEST(Optimizer, AdamStateBoundOnceFollowsASharedTransformAndARestore) {
  const at::Tensor x = at::linspace(-1, 1, 20).reshape({5, 4}), y = at::tensor({0, 1, 2, 1, 0}, at::kLong);
  auto step = [&](Module& m, Optimizer& opt) {
    zero_grad(m);
    at::cross_entropy_loss(m.forward(x), y).backward();
    opt.step();
  };
  auto make = [] {
    Rngs rngs({{"params", 3}});
    return std::make_shared<Mlp>(rngs);
  };
  // Two optimizers sharing one transform, stepped alternately, against one transform each.
  auto a = make(), b = make(), ra = make(), rb = make();
  auto shared = adamw(AdamOptions(1e-2));
  Optimizer oa(a, {shared}), ob(b, {shared}), ora(ra, {adamw(AdamOptions(1e-2))}), orb(rb, {adamw(AdamOptions(1e-2))});
  for (int i = 0; i < 3; ++i) {
    step(*a, oa);
    step(*ra, ora);
  }
  step(*b, ob);
  step(*rb, orb);
  step(*a, oa);
  step(*ra, ora);
  EXPECT_TRUE(state(*a).equal(state(*ra))) << state(*a).first_difference(state(*ra));
  EXPECT_TRUE(state(oa).equal(state(ora))) << state(oa).first_difference(state(ora));
  EXPECT_TRUE(state(ob).equal(state(orb))) << state(ob).first_difference(state(orb));
  // A restore after steps: the next step starts from the restored moments, not the bound ones.
  const State params_at_4 = state(*a).clone(), opt_at_4 = state(oa).clone();
  step(*a, oa);
  const State params_at_5 = state(*a).clone(), opt_at_5 = state(oa).clone();
  step(*a, oa);
  update(*a, params_at_4);
  update(oa, opt_at_4);
  step(*a, oa);
  EXPECT_TRUE(state(*a).equal(params_at_5)) << state(*a).first_difference(params_at_5);
  EXPECT_TRUE(state(oa).equal(opt_at_5)) << state(oa).first_difference(opt_at_5);
}
