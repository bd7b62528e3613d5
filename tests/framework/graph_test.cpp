#include "nnx/framework/graph.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "nnx/framework/layers.h"

using namespace nnx;

namespace {
struct Net : ModuleBase<Net> {
  explicit Net(Rngs& rngs) {
    register_module("fc1", std::make_shared<Linear>(4, 8, rngs));
    register_module("bn", std::make_shared<BatchNorm>(8, 0));
    register_module("drop", std::make_shared<Dropout>(0.5, rngs));
    register_module("fc2", std::make_shared<Linear>(8, 4, rngs));
    // weight tying: out shares fc1's kernel
    auto out = std::make_shared<ModuleDict>();
    out->register_variable("kernel", child("fc1").variable("kernel"));
    register_module("out", out);
  }
  at::Tensor forward(const at::Tensor& x) override {
    auto h = child("drop").forward(at::relu(child("bn").forward(child("fc1").forward(x))));
    return at::matmul(child("fc2").forward(h), child("out").variable("kernel").value());
  }
};
}  // namespace

TEST(Graph, SplitPlacesEachVariableInExactlyOneState) {
  Rngs rngs({{"params", 0}, {"dropout", 1}});
  Net net(rngs);
  auto [gd, params, stats, rest] = split(net, Param, BatchStat, Everything());
  State all = state(net);
  EXPECT_EQ(params.size() + stats.size() + rest.size(), all.size());
  for (const auto& [p, vs] : all) {
    int n = params.contains(p) + stats.contains(p) + rest.contains(p);
    EXPECT_EQ(n, 1) << p;
  }
  EXPECT_TRUE(rest.contains("drop/rng/key"));
  EXPECT_FALSE(params.contains("out/kernel"));  // tied: only under its first path
  EXPECT_THROW(split(net, Param, BatchStat), Error);
}

TEST(Graph, MergeRestoresSharingAndValues) {
  Rngs rngs({{"params", 0}, {"dropout", 1}});
  Net net(rngs);
  auto [gd, params, rest] = split(net, Param, Everything());
  auto merged = merge_as<Net>(gd, params, rest);
  EXPECT_TRUE(state(*merged).equal(state(net)));
  EXPECT_TRUE(merged->child("out").variable("kernel").is(merged->child("fc1").variable("kernel")));
  net.eval();
  merged->eval();
  auto x = at::randn({3, 4});
  EXPECT_TRUE(at::equal(net.forward(x), merged->forward(x)));
  // Missing / extra paths are errors naming them.
  try {
    merge(gd, {params});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bn/mean"), std::string::npos) << e.what();
  }
  State extra = rest;
  extra.insert("ghost/x", {Param, at::zeros({1}), {}});
  EXPECT_THROW(merge(gd, {params, extra}), Error);
}

TEST(Graph, UpdateChecksPathShapeAndDtypeNamingBoth) {
  Rngs rngs(0);
  Net net(rngs);
  State s;
  s.insert("fc1/bias", {Param, at::zeros({9}), {}});
  try {
    update(net, s);
    FAIL();
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("fc1/bias"), std::string::npos) << m;
    EXPECT_NE(m.find("[8]"), std::string::npos) << m;
    EXPECT_NE(m.find("[9]"), std::string::npos) << m;
  }
  State d;
  d.insert("fc1/bias", {Param, at::zeros({8}, at::kDouble), {}});
  try {
    update(net, d);
    FAIL();
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("fc1/bias"), std::string::npos);
    EXPECT_NE(m.find("Float"), std::string::npos) << m;
    EXPECT_NE(m.find("Double"), std::string::npos) << m;
  }
  State missing;
  missing.insert("fc9/bias", {Param, at::zeros({8}), {}});
  EXPECT_THROW(update(net, missing), Error);
  State ok;
  ok.insert("fc1/bias", {Param, at::full({8}, 2.0), {}});
  update(net, ok);
  EXPECT_TRUE(at::equal(net.child("fc1").variable("bias").value(), at::full({8}, 2.0)));
  EXPECT_TRUE(net.child("fc1").variable("bias").value().requires_grad());
}

TEST(Graph, EvalShapeAllocatesNoData) {
  auto abstract = eval_shape([] {
    Rngs rngs(0);
    return std::make_shared<Net>(rngs);
  });
  State s = state(*abstract);
  EXPECT_GT(s.size(), 0u);
  for (const auto& [p, vs] : s) EXPECT_TRUE(vs.value.is_meta()) << p;
  EXPECT_EQ(s.at("fc1/kernel").value.sizes(), (std::vector<int64_t>{4, 8}));
  // A 10-billion-parameter stack of Linear layers: shapes only.
  auto huge = eval_shape([] {
    Rngs rngs(0);
    auto list = std::make_shared<ModuleList>();
    for (int i = 0; i < 40; ++i) list->push_back(std::make_shared<Linear>(16384, 16384, rngs));
    return list;
  });
  State hs = state(*huge);
  int64_t n = 0;
  for (const auto& [p, vs] : hs) {
    EXPECT_TRUE(vs.value.is_meta());
    n += vs.value.numel();
  }
  EXPECT_GT(n, 10'000'000'000LL);
  // The abstract state is a restore template: update fills it.
  Rngs r(0);
  Net real(r);
  update(*abstract, state(real));
  EXPECT_FALSE(state(*abstract).at("fc1/kernel").value.is_meta());
  EXPECT_TRUE(state(*abstract).equal(state(real)));
}

TEST(Graph, GraphDefJsonRoundTripThroughRegistry) {
  Rngs rngs(0);
  auto seq = std::make_shared<Sequential>();
  seq->push_back(std::make_shared<Linear>(3, 4, rngs));
  seq->push_back(std::make_shared<GELU>());
  seq->push_back(std::make_shared<LayerNorm>(4));
  auto gd = graphdef(*seq);
  std::string text = gd.to_json().dump();
  GraphDef restored = GraphDef::from_json(nlohmann::json::parse(text));
  EXPECT_FALSE(restored.has_prototype());
  auto m = merge(restored, {state(*seq)});
  auto x = at::randn({2, 3});
  EXPECT_TRUE(at::equal(m->forward(x), seq->forward(x)));
  // An unregistered type names itself.
  auto bad = gd.to_json();
  bad["slots"][0]["module"]["type"] = "NoSuchLayer";
  try {
    merge(GraphDef::from_json(bad), {state(*seq)});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("NoSuchLayer"), std::string::npos);
  }
}

TEST(Graph, PopRemovesMatchingVariables) {
  Rngs rngs(0);
  Net net(rngs);
  net.child("fc1").register_variable("act", Intermediate(at::ones({2})));
  State popped = pop(net, Intermediate);
  EXPECT_EQ(popped.paths(), (std::vector<std::string>{"fc1/act"}));
  EXPECT_FALSE(net.child("fc1").has_variable("act"));
}

TEST(Graph, GradsAndZeroGrad) {
  Rngs rngs(0);
  Net net(rngs);
  net.eval();
  net.forward(at::randn({2, 4})).sum().backward();
  State g = grads(net);
  EXPECT_EQ(g.paths(), state(net, Param).paths());
  EXPECT_GT(g.at("fc2/kernel").value.abs().sum().item<double>(), 0.0);
  EXPECT_EQ(g.at("bn/scale").value.sizes(), (std::vector<int64_t>{8}));
  zero_grad(net);
  EXPECT_FALSE(net.child("fc2").variable("kernel").value().grad().defined());
  EXPECT_THROW(grads(net, BatchStat), Error);
}

// A model merged from restored (plain, grad-less) tensors trains: its Params require grad, the
// state's own tensors are left as they were, and other kinds stay without grad. A state shaped
// or typed for another model is an error naming the path, as in update().
TEST(Graph, MergedModelTrainsAndMergeChecksShapeAndDtype) {
  Rngs rngs({{"params", 0}, {"dropout", 1}});
  Net net(rngs);
  auto [gd, params, rest] = split(net, Param, Everything());
  State restored;  // what a checkpoint restore returns: detached tensors
  for (const auto& [p, vs] : params) restored.insert(p, {vs.kind, vs.value.detach().clone(), vs.metadata});
  auto merged = merge_as<Net>(gd, restored, rest);
  for (const auto& [p, vs] : state(*merged, Param)) EXPECT_TRUE(vs.value.requires_grad()) << p;
  for (const auto& [p, vs] : restored) EXPECT_FALSE(vs.value.requires_grad()) << p;
  EXPECT_FALSE(merged->child("bn").variable("mean").value().requires_grad());
  merged->train();
  merged->forward(at::randn({3, 4})).sum().backward();  // threw "does not require grad" before
  EXPECT_TRUE(merged->child("fc1").variable("kernel").value().grad().defined());
  State wrong = restored;
  wrong.at("fc2/bias").value = at::zeros({5});
  try {
    merge(gd, {wrong, rest});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("merge: shape mismatch at 'fc2/bias'"), std::string::npos) << e.what();
  }
  wrong.at("fc2/bias").value = at::zeros({4}, at::kDouble);
  EXPECT_THROW(merge(gd, {wrong, rest}), Error);
}

// A bf16 Linear rebuilt from its GraphDef's JSON is bf16 again (config() kept no dtype, and the
// merge then failed on the dtype check, or trained in float32 before it).
TEST(Graph, Bfloat16LinearRebuildsFromJsonAsBfloat16) {
  Rngs rngs(0);
  Linear lin(3, 4, rngs, true, init::Scheme::kPyTorch, at::kBFloat16);
  EXPECT_EQ(lin.config()["dtype"], "bfloat16");
  EXPECT_FALSE(Linear(3, 4, rngs).config().contains("dtype"));  // float32 stays implicit
  GraphDef restored = GraphDef::from_json(nlohmann::json::parse(graphdef(lin).to_json().dump()));
  auto m = merge(restored, {state(lin)});
  EXPECT_EQ(m->variable("kernel").value().scalar_type(), at::kBFloat16);
  EXPECT_TRUE(state(*m).equal(state(lin)));
}
