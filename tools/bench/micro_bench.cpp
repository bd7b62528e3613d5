// nnx-microbench: Google Benchmark micro-benchmarks of the hot paths.
//   build/bin/nnx-microbench [--benchmark_filter=Adam]
#include <ATen/ATen.h>
#include <benchmark/benchmark.h>
#include <torch/optim/adam.h>

#include "checkpoint/hdf5_io.h"
#include "framework/graph.h"
#include "optim/optimizer.h"

namespace {

// 10 M params in 100 tensors: nnx's Adam update vs torch::optim::Adam's step.
void BM_NnxAdamUpdate(benchmark::State& st) {
  auto model = std::make_shared<nnx::ModuleDict>();
  nnx::State g;
  for (int i = 0; i < 100; ++i) {
    model->register_variable("p" + std::to_string(i), nnx::Param(at::randn({100000})));
    g.insert("p" + std::to_string(i), {nnx::Param, at::randn({100000}), {}});
  }
  nnx::optim::Optimizer opt(model, {nnx::optim::adam()});
  for (auto _ : st) opt.update(g);
  st.SetItemsProcessed(st.iterations() * 10000000);
}
BENCHMARK(BM_NnxAdamUpdate)->Unit(benchmark::kMillisecond);

void BM_TorchAdamStep(benchmark::State& st) {
  std::vector<at::Tensor> ps;
  for (int i = 0; i < 100; ++i) {
    auto p = at::randn({100000}).requires_grad_(true);
    p.mutable_grad() = at::randn({100000});
    ps.push_back(p);
  }
  torch::optim::Adam opt(ps, torch::optim::AdamOptions(1e-3));
  for (auto _ : st) opt.step();
  st.SetItemsProcessed(st.iterations() * 10000000);
}
BENCHMARK(BM_TorchAdamStep)->Unit(benchmark::kMillisecond);

// XXH3 over 64 MiB (the per-dataset checksum of saves and restores).
void BM_Checksum64MiB(benchmark::State& st) {
  at::Tensor t = at::randn({16 << 20});
  for (auto _ : st) benchmark::DoNotOptimize(nnx::checkpoint::checksum_bytes(t.data_ptr(), 64 << 20));
  st.SetBytesProcessed(st.iterations() * (int64_t(64) << 20));
}
BENCHMARK(BM_Checksum64MiB)->Unit(benchmark::kMillisecond);

// nnx::state + split of a 1000-variable module (the per-save bookkeeping).
void BM_StateSplit1000(benchmark::State& st) {
  nnx::ModuleDict m;
  for (int i = 0; i < 1000; ++i)
    nnx::insert_variable(m, "block" + std::to_string(i / 10) + "/v" + std::to_string(i % 10),
                         i % 3 ? nnx::Param(at::zeros({4})) : nnx::BatchStat(at::zeros({4})));
  for (auto _ : st) benchmark::DoNotOptimize(nnx::split(m, nnx::Param, nnx::Everything()));
}
BENCHMARK(BM_StateSplit1000)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
