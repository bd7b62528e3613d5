#include "nnx/models/models.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "nnx/framework/graph.h"
#include "nnx/framework/layers.h"

using namespace nnx;
using namespace nnx::models;

namespace {
std::shared_ptr<Rngs> rngs() { return std::make_shared<Rngs>(std::map<std::string, uint64_t>{{"params", 0}, {"dropout", 1}}); }
}  // namespace

TEST(Models, ShapesAndStateLayout) {
  auto mlp = build_model("MLP", {{"in_features", 12}, {"hidden", {8, 6}}, {"num_classes", 3}, {"dropout", 0.1}}, rngs());
  EXPECT_EQ(mlp->forward(at::randn({5, 3, 4})).sizes(), (std::vector<int64_t>{5, 3}));
  auto cnn = build_model("CNN", {{"channels", {4, 8}}, {"hidden", 16}}, rngs());
  EXPECT_EQ(cnn->forward(at::randn({2, 1, 28, 28})).sizes(), (std::vector<int64_t>{2, 10}));
  State cs = state(*cnn);
  EXPECT_TRUE(cs.contains("layers/1/mean"));  // BatchNorm2d running stats
  EXPECT_EQ(cs.at("layers/1/mean").kind, BatchStat);
  EXPECT_TRUE(cs.contains("rngs/dropout/count"));
  auto gpt = build_model("GPT", {{"vocab_size", 20}, {"block_size", 8}, {"d_model", 16}, {"num_heads", 2}, {"num_layers", 2}}, rngs());
  auto ids = at::randint(0, 20, {3, 8}, at::kLong);
  EXPECT_EQ(gpt->forward(ids).sizes(), (std::vector<int64_t>{3, 8, 20}));
  EXPECT_THROW(gpt->forward(at::randint(0, 20, {1, 9}, at::kLong)), Error);
  EXPECT_THROW(build_model("ResNet", {}, rngs()), Error);
}

TEST(Models, GptTiesEmbeddingAndOutput) {
  auto gpt = build_model("GPT", {{"vocab_size", 11}, {"block_size", 4}, {"d_model", 8}, {"num_heads", 2}, {"num_layers", 1}}, rngs());
  gpt->eval();
  auto ids = at::randint(0, 11, {1, 4}, at::kLong);
  gpt->forward(ids).sum().backward();
  // One embedding matrix receives gradient from both the input lookup and the output logits.
  State g = grads(*gpt);
  EXPECT_TRUE(g.contains("embed/embedding"));
  EXPECT_FALSE(g.contains("head/kernel"));
  EXPECT_EQ(state(*gpt, Param).at("embed/embedding").value.sizes(), (std::vector<int64_t>{11, 8}));
}

TEST(Models, RegistryRebuildsFromGraphDefJson) {
  auto cnn = build_model("CNN", {{"channels", {2, 4}}, {"hidden", 8}}, rngs());
  auto json = graphdef(*cnn).to_json();
  auto back = merge(GraphDef::from_json(nlohmann::json::parse(json.dump())), {state(*cnn)});
  cnn->eval();
  back->eval();
  auto x = at::randn({2, 1, 28, 28});
  EXPECT_TRUE(at::equal(cnn->forward(x), back->forward(x)));
  EXPECT_EQ(back->type_name(), "CNN");
}

TEST(Models, SameSeedSameModel) {
  auto a = build_model("MLP", {{"in_features", 4}, {"hidden", {3}}}, rngs());
  auto b = build_model("MLP", {{"in_features", 4}, {"hidden", {3}}}, rngs());
  EXPECT_TRUE(state(*a).equal(state(*b)));
}
