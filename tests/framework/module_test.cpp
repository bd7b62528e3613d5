#include "nnx/framework/module.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>

#include "nnx/framework/graph.h"
#include "nnx/framework/layers.h"

using namespace nnx;

namespace {
// A small model with a tied projection: head/kernel is the same Variable as embed/embedding.
struct TiedNet : ModuleBase<TiedNet> {
  explicit TiedNet(Rngs& rngs) {
    register_module("embed", std::make_shared<Embedding>(10, 4, rngs));
    auto blocks = std::make_shared<ModuleList>();
    blocks->push_back(std::make_shared<Linear>(4, 4, rngs));
    blocks->push_back(std::make_shared<BatchNorm>(4, 0));
    register_module("blocks", blocks);
    auto head = std::make_shared<ModuleDict>();
    head->register_variable("kernel", child<Embedding>("embed").variable("embedding"));
    register_module("head", head);
  }
};
}  // namespace

TEST(Module, RegistrationChecksNamesAndKeepsOrder) {
  ModuleDict m;
  m.register_variable("b", Param(at::zeros({1})));
  m.register_variable("a", Param(at::zeros({1})));
  EXPECT_THROW(m.register_variable("a", Param(at::zeros({1}))), Error);
  EXPECT_THROW(m.register_variable("x/y", Param(at::zeros({1}))), Error);
  EXPECT_THROW(m.register_variable("x.y", Param(at::zeros({1}))), Error);
  EXPECT_THROW(m.register_variable("", Param(at::zeros({1}))), Error);
  auto vars = m.named_variables();
  ASSERT_EQ(vars.size(), 2u);
  EXPECT_EQ(vars[0].first, "b");
  EXPECT_EQ(vars[1].first, "a");
  try {
    m.variable("zzz");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("zzz"), std::string::npos);
  }
}

TEST(Module, TiedVariableAppearsOnceUnderFirstPath) {
  Rngs rngs(0);
  TiedNet net(rngs);
  auto vars = net.named_variables();
  std::vector<std::string> paths;
  for (auto& [p, v] : vars) paths.push_back(p);
  EXPECT_EQ(paths, (std::vector<std::string>{"embed/embedding", "blocks/0/kernel", "blocks/0/bias", "blocks/1/scale",
                                             "blocks/1/bias", "blocks/1/mean", "blocks/1/var"}));
  EXPECT_EQ(net.named_variables(true).size(), 8u);
  EXPECT_EQ(net.child<ModuleList>("blocks")[0].path(), "blocks/0");
}

TEST(Module, TrainEvalReachesNestedModules) {
  Rngs rngs(0);
  TiedNet net(rngs);
  net.eval();
  for (auto& [p, m] : net.named_modules()) EXPECT_FALSE(m->is_training()) << p;
  net.train();
  EXPECT_TRUE(net.child<ModuleList>("blocks")[1].is_training());
}

TEST(Module, ToDtypeKeepsTyingAndRngKeys) {
  Rngs rngs(0);
  TiedNet net(rngs);
  net.register_module("rngs", std::make_shared<Rngs>(3));
  net.to(at::kDouble);
  EXPECT_EQ(net.child<Embedding>("embed").variable("embedding").value().scalar_type(), at::kDouble);
  EXPECT_TRUE(net.child("head").variable("kernel").is(net.child<Embedding>("embed").variable("embedding")));
  EXPECT_EQ(state(net, RngState).at("rngs/default/key").value.scalar_type(), at::kLong);
  net.to(c10::Device(c10::kCPU));  // a no-op move still keeps everything
  EXPECT_TRUE(net.child("head").variable("kernel").is(net.child<Embedding>("embed").variable("embedding")));
}

TEST(Module, CloneIsDeepAndKeepsTying) {
  Rngs rngs(0);
  TiedNet net(rngs);
  auto copy = clone_as(net);
  ASSERT_TRUE(copy);
  EXPECT_TRUE(state(*copy).equal(state(net)));
  auto& e = copy->child<Embedding>("embed").variable("embedding");
  EXPECT_TRUE(copy->child("head").variable("kernel").is(e));
  EXPECT_FALSE(e.is(net.child<Embedding>("embed").variable("embedding")));
  c10::NoGradGuard g;
  const_cast<at::Tensor&>(e.value()).add_(1.0);
  EXPECT_FALSE(state(*copy).equal(state(net)));
  EXPECT_TRUE(at::equal(copy->child("head").variable("kernel").value(), e.value()));
}

TEST(Module, SequentialRunsChildrenAndInsertVariableBuildsDicts) {
  Rngs rngs(1);
  Sequential seq;
  seq.push_back(std::make_shared<Linear>(3, 5, rngs)).push_back(std::make_shared<ReLU>()).push_back(
      std::make_shared<Linear>(5, 2, rngs));
  EXPECT_EQ(seq.forward(at::randn({4, 3})).sizes(), (std::vector<int64_t>{4, 2}));
  ModuleDict root;
  insert_variable(root, "mu/fc1/kernel", OptState(at::zeros({2})));
  insert_variable(root, "mu/fc1/bias", OptState(at::zeros({2})));
  EXPECT_EQ(state(root).paths(), (std::vector<std::string>{"mu/fc1/kernel", "mu/fc1/bias"}));
  EXPECT_THROW(insert_variable(root, "mu/fc1/kernel/x", OptState(at::zeros({2}))), Error);
}

// Two modules registering each other: rejected at registration, naming both paths (a cycle
// made split, graphdef and clone recurse until the stack overflowed).
TEST(Module, ACycleIsRejectedAtRegistrationNamingBothPaths) {
  auto a = std::make_shared<ModuleDict>();
  auto b = std::make_shared<ModuleDict>();
  a->register_module("b", b);
  try {
    b->register_module("a", a);
    FAIL();
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("cannot register module 'b/a'"), std::string::npos) << m;
    EXPECT_NE(m.find("at 'b/a/b'"), std::string::npos) << m;
  }
  auto c = std::make_shared<ModuleDict>();
  b->register_module("c", c);
  EXPECT_THROW(c->register_module("up", a), Error);  // a cycle through two levels
  auto shared = std::make_shared<ModuleDict>();
  a->register_module("s1", shared);
  b->register_module("s2", shared);  // a shared child is no cycle
  const auto mods = a->named_modules();  // "" (a), b, b/c, b/s2: the shared child once, first path
  ASSERT_EQ(mods.size(), 4u);
  EXPECT_EQ(mods[0].first, "");
  EXPECT_EQ(mods[0].second.get(), a.get());
  EXPECT_EQ(mods[3].first, "b/s2");
}
