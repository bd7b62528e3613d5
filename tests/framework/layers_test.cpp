#include "nnx/framework/layers.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "nnx/framework/graph.h"
#include "test_util.h"

using namespace nnx;

namespace {
// Loads golden params into `m`, runs forward + backward of sum(y * w) and compares y, dx and
// every param gradient with the values Python PyTorch produced (tests/golden/make_golden.py).
void check_golden(Module& m, const std::string& name, double tol = 1e-5) {
  auto g = test::load_golden("layers.json").at(name);
  State s;
  for (auto it = g["params"].begin(); it != g["params"].end(); ++it)
    s.insert(it.key(), {Param, test::golden_tensor(it.value()), {}});
  update(m, s);
  bool float_in = g.contains("dx");
  at::Tensor x = float_in ? test::golden_tensor(g["x"]).requires_grad_(true) : test::golden_tensor(g["x"], at::kLong);
  at::Tensor y = m.forward(x);
  EXPECT_TRUE(at::allclose(y, test::golden_tensor(g["y"]), tol, tol)) << name << " forward";
  (y * test::golden_tensor(g["w"])).sum().backward();
  if (float_in) {
    EXPECT_TRUE(at::allclose(x.grad(), test::golden_tensor(g["dx"]), tol, tol)) << name << " dx";
  }
  State gr = grads(m);
  for (auto it = g["grads"].begin(); it != g["grads"].end(); ++it)
    EXPECT_TRUE(at::allclose(gr.at(it.key()).value, test::golden_tensor(it.value()), tol, tol))
        << name << " grad " << it.key();
}
}  // namespace

TEST(Layers, LinearMatchesPyTorch) {
  Rngs rngs(0);
  Linear m(5, 3, rngs);
  check_golden(m, "linear");
}

TEST(Layers, Conv2dMatchesPyTorch) {
  Rngs rngs(0);
  Conv2d m(2, 3, 3, rngs, 1, 1);
  check_golden(m, "conv2d");
}

TEST(Layers, MaxPoolLayerNormEmbeddingActivationsMatchPyTorch) {
  Rngs rngs(0);
  MaxPool2d pool(2);
  check_golden(pool, "maxpool2d");
  LayerNorm ln(6);
  check_golden(ln, "layernorm");
  Embedding emb(10, 4, rngs);
  check_golden(emb, "embedding");
  GELU gelu;
  check_golden(gelu, "gelu");
  ReLU relu;
  check_golden(relu, "relu");
}

TEST(Layers, CausalAttentionMatchesPyTorch) {
  Rngs rngs(0);
  MultiHeadAttention m(8, 2, rngs);
  check_golden(m, "mha", 1e-5);
}

TEST(Layers, BatchNormRunningStatsMatchPyTorchAfterTenSteps) {
  auto g = test::load_golden("layers.json").at("batchnorm2d");
  BatchNorm bn(3, 2);
  for (const auto& x : g["xs"]) bn.forward(test::golden_tensor(x));
  EXPECT_TRUE(at::allclose(bn.variable("mean").value(), test::golden_tensor(g["mean"]), 1e-5, 1e-5));
  EXPECT_TRUE(at::allclose(bn.variable("var").value(), test::golden_tensor(g["var"]), 1e-5, 1e-5));
  bn.eval();
  EXPECT_TRUE(at::allclose(bn.forward(test::golden_tensor(g["x_eval"])), test::golden_tensor(g["y_eval"]), 1e-5, 1e-5));
  EXPECT_EQ(bn.variable("mean").kind(), BatchStat);
}

TEST(Layers, WrongInputShapeNamesLayerPathAndShapes) {
  Rngs rngs(0);
  Sequential net;
  net.push_back(std::make_shared<Linear>(4, 3, rngs));
  auto outer = std::make_shared<ModuleDict>();
  outer->register_module("body", std::make_shared<Sequential>(net));
  try {
    outer->child("body").forward(at::randn({2, 5}));
    FAIL();
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("layer 'body/0' (Linear)"), std::string::npos) << m;
    EXPECT_NE(m.find("[..., 4]"), std::string::npos) << m;
    EXPECT_NE(m.find("[2, 5]"), std::string::npos) << m;
  }
  Conv2d conv(3, 4, 3, rngs);
  EXPECT_THROW(conv.forward(at::randn({1, 2, 8, 8})), Error);
  BatchNorm bn(4, 2);
  EXPECT_THROW(bn.forward(at::randn({2, 4})), Error);
  Embedding emb(5, 2, rngs);
  EXPECT_THROW(emb.forward(at::randn({2})), Error);
  EXPECT_THROW(MultiHeadAttention(10, 3, rngs), Error);
}

TEST(Layers, InitSchemesAndTiedAttend) {
  Rngs rngs(0);
  Linear lecun(64, 32, rngs, true, init::Scheme::kLecun);
  EXPECT_TRUE(at::equal(lecun.variable("bias").value(), at::zeros({32})));
  Linear torch_default(64, 32, rngs);
  EXPECT_LE(torch_default.variable("kernel").value().abs().max().item<double>(), 1.0 / 8.0);
  Embedding emb(7, 4, rngs);
  auto logits = emb.attend(at::randn({2, 3, 4}));
  EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{2, 3, 7}));
  // Same seeds, same params: construction is reproducible.
  Rngs a(9), b(9);
  EXPECT_TRUE(state(Linear(3, 3, a)).equal(state(Linear(3, 3, b))));
}
