// Your own model and dataset in nnx-train: registers model.type "resmlp" (a residual MLP with
// LayerNorm and dropout) and data.dataset "spirals" (interleaved 2-D spirals, one per class),
// then hands the command line to nnx-train's loop. Everything nnx-train does works on them:
// resume, async and local-tier checkpoints, policies, nnx-ckpt, nnx-launch.
//   ./custom_trainer --config spirals.yaml [key=value ...]
#include <ATen/ATen.h>

#include <cmath>

#include <nnx/framework/layers.h>
#include <nnx/trainer/datasets.h>
#include <nnx/trainer/registry.h>
#include <nnx/trainer/trainer.h>

// x + Dropout(Linear(ReLU(Linear(LayerNorm(x))))), `depth` times, between an input and an
// output Linear. Input [N, in_features], logits [N, num_classes].
struct ResMLP : nnx::ModuleBase<ResMLP> {
  ResMLP(int64_t in, int64_t width, int64_t depth, double dropout, int64_t classes, std::shared_ptr<nnx::Rngs> rngs)
      : depth(depth) {
    register_module("rngs", rngs);  // its streams are state: checkpointed, and salted per rank
    register_module("embed", std::make_shared<nnx::Linear>(in, width, *rngs));
    for (int64_t i = 0; i < depth; ++i) {
      auto block = std::make_shared<nnx::Sequential>();
      block->push_back(std::make_shared<nnx::LayerNorm>(width));
      block->push_back(std::make_shared<nnx::Linear>(width, width, *rngs));
      block->push_back(std::make_shared<nnx::ReLU>());
      block->push_back(std::make_shared<nnx::Linear>(width, width, *rngs));
      block->push_back(std::make_shared<nnx::Dropout>(dropout, *rngs));
      register_module("block" + std::to_string(i), block);
    }
    register_module("head", std::make_shared<nnx::Linear>(width, classes, *rngs));
  }
  at::Tensor forward(const at::Tensor& x) override {
    at::Tensor h = child("embed").forward(x);
    for (int64_t i = 0; i < depth; ++i) h = h + child("block" + std::to_string(i)).forward(h);
    return child("head").forward(h);
  }
  std::string type_name() const override { return "ResMLP"; }
  int64_t depth;
};

// `arms` spirals of `points` each, radius growing with the angle, Gaussian noise; class = arm.
// Deterministic in `seed`.
std::shared_ptr<nnx::data::TensorDataset> spirals(int64_t arms, int64_t points, double noise, uint64_t seed) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  at::Tensor t = at::linspace(0.1, 1.0, points).repeat({arms});  // position along the arm
  at::Tensor arm = at::arange(arms, at::kLong).repeat_interleave(points);
  at::Tensor angle = t * 3 * M_PI + arm.to(at::kFloat) * (2 * M_PI / arms);
  at::Tensor xy = at::stack({t * at::cos(angle), t * at::sin(angle)}, 1);
  xy = xy + noise * at::randn(xy.sizes(), gen);
  at::Tensor order = at::randperm(arms * points, gen);  // interleave the classes
  return std::make_shared<nnx::data::TensorDataset>(xy.index_select(0, order), arm.index_select(0, order));
}

int main(int argc, char** argv) {
  namespace tr = nnx::trainer;
  tr::register_dataset({"spirals",
                        [](nnx::trainer::OptionReader& data) {
                          return nlohmann::json{{"arms", data.integer("arms", 3, 2, 64)},
                                                {"points", data.integer("points", 500, 10, 1000000)},
                                                {"noise", data.number("noise", 0.02, 0.0, 1.0)}};
                        },
                        [](const nlohmann::json& o, const tr::Config& c) {
                          tr::Datasets d;
                          const int64_t arms = o["arms"], points = o["points"];
                          d.train = spirals(arms, points, o["noise"], c.seed);
                          d.eval = spirals(arms, std::max<int64_t>(points / 4, 1), o["noise"], c.seed + 1);
                          d.in_features = 2;
                          d.num_classes = arms;
                          return d;
                        }});
  tr::register_model_type({"resmlp",
                           {"spirals"},
                           [](nnx::trainer::OptionReader& model) {
                             return nlohmann::json{{"width", model.integer("width", 64, 1, 65536)},
                                                   {"depth", model.integer("depth", 2, 1, 64)},
                                                   {"dropout", model.number("dropout", 0.1, 0.0, 0.99)}};
                           },
                           [](const nlohmann::json& o, const tr::Datasets& d, const tr::Config&, std::shared_ptr<nnx::Rngs> rngs) {
                             return std::make_shared<ResMLP>(d.in_features, o["width"], o["depth"], o["dropout"], d.num_classes,
                                                             std::move(rngs));
                           }});
  return tr::train_main(argc, argv);
}
