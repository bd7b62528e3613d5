// nnx-microbench: Google Benchmark micro-benchmarks of the hot paths.
//   build/bin/nnx-microbench [--benchmark_filter=Adam]
#include <ATen/ATen.h>
#include <benchmark/benchmark.h>
#include <torch/optim/adam.h>

#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "nnx/checkpoint/async_checkpointer.h"
#include "nnx/checkpoint/format/json_item.h"
#include "nnx/checkpoint/format/state_reader.h"
#include "nnx/checkpoint/format/state_writer.h"
#include "nnx/checkpoint/io/checksum.h"
#include "nnx/checkpoint/shard_planner.h"
#include "nnx/framework/graph.h"
#include "nnx/optim/optimizer.h"
#include "nnx/trainer/trainer.h"

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
  for (auto _ : st) benchmark::DoNotOptimize(nnx::checkpoint::io::checksum_bytes(t.data_ptr(), 64 << 20));
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

// 100 fp32 tensors of `numel` elements, named layer<i>/kernel.
nnx::State hundred_tensors(int64_t numel) {
  nnx::State s;
  for (int i = 0; i < 100; ++i) s.insert("layer" + std::to_string(i) + "/kernel", {nnx::Param, at::randn({numel}), {}});
  return s;
}

// The restore template of `s`: the same paths, kinds and shapes on the meta device.
nnx::State abstract_of(const nnx::State& s) {
  nnx::State t;
  for (const auto& [p, vs] : s) t.insert(p, {vs.kind, at::empty(vs.value.sizes(), at::TensorOptions().device(at::kMeta)), {}});
  return t;
}

// Restore of a page-cached 400 MB checkpoint (100 fp32 tensors of 4 MB) against a raw read()
// of the same bytes into fresh tensors; freed memory is kept (as nnx-train does), so neither
// side pays page faults. First arg 1: checksums verified, 0: not. Second arg 1: the checkpoint
// was written with O_DIRECT (the default; its page cache filled by reading it), 0: through the
// page cache (WriteOptions::direct_io = false), as the raw file always is.
struct CachedCheckpoint {
  std::filesystem::path dir;
  nnx::State templ;
  explicit CachedCheckpoint(int64_t numel)
      : dir(std::filesystem::temp_directory_path() /
            ("nnx-microbench-" + std::to_string(::getpid()) + "-" + std::to_string(numel))) {
    nnx::trainer::keep_freed_memory();  // as nnx-train: no page faults for re-allocated tensors
    std::filesystem::create_directories(dir);
    const nnx::State s = hundred_tensors(numel);
    templ = abstract_of(s);
    nnx::checkpoint::Checkpointer().save(dir / "ckpt", nnx::checkpoint::Composite{{"params", nnx::checkpoint::StandardSave(s)}});
    nnx::checkpoint::Checkpointer buffered;
    buffered.write_options.direct_io = false;
    buffered.save(dir / "ckpt-buffered", nnx::checkpoint::Composite{{"params", nnx::checkpoint::StandardSave(s)}});
    int fd = ::open((dir / "raw").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    for (const auto& [p, vs] : s) benchmark::DoNotOptimize(::write(fd, vs.value.data_ptr(), numel * 4));
    ::close(fd);
  }
  ~CachedCheckpoint() { std::filesystem::remove_all(dir); }
};
CachedCheckpoint& cached() {
  static CachedCheckpoint c(1000 * 1000);
  return c;
}

void BM_Restore400MB(benchmark::State& st) {
  auto& c = cached();
  nnx::checkpoint::ReadOptions ro;
  ro.verify_checksums = st.range(0) != 0;
  nnx::checkpoint::Checkpointer ck;
  const auto path = c.dir / (st.range(1) ? "ckpt" : "ckpt-buffered");
  for (auto _ : st)
    benchmark::DoNotOptimize(ck.restore(path, nnx::checkpoint::Composite{{"params", nnx::checkpoint::StandardRestore(c.templ, ro)}}));
  st.SetBytesProcessed(st.iterations() * 400000000);
}
BENCHMARK(BM_Restore400MB)->Args({1, 1})->Args({0, 1})->Args({1, 0})->Args({0, 0})->Unit(benchmark::kMillisecond)->UseRealTime();

// The fixed cost of a restore: 100 one-element variables (opening the file and the datasets,
// reading their attributes, checking the template).
void BM_Restore100Tiny(benchmark::State& st) {
  static CachedCheckpoint c(1);
  nnx::checkpoint::Checkpointer ck;
  for (auto _ : st)
    benchmark::DoNotOptimize(ck.restore(c.dir / "ckpt", nnx::checkpoint::Composite{{"params", nnx::checkpoint::StandardRestore(c.templ)}}));
}
BENCHMARK(BM_Restore100Tiny)->Unit(benchmark::kMicrosecond);

// The same 400 MB as a 2-rank checkpoint: each rank's shard file holds half of the tensors and
// checkpoint.h5 presents them as virtual datasets (what a replicated state saved at world size
// 2 looks like); restored at world size 1.
struct TwoRankCheckpoint {
  std::filesystem::path dir = std::filesystem::temp_directory_path() / ("nnx-microbench-vds-" + std::to_string(::getpid()));
  nnx::State templ;
  TwoRankCheckpoint() {
    namespace ck = nnx::checkpoint;
    nnx::trainer::keep_freed_memory();  // as nnx-train: no page faults for re-allocated tensors
    std::filesystem::create_directories(dir);
    std::map<std::string, ck::VirtualSource> sources;
    nnx::State all;
    for (int r = 0; r < 2; ++r) {
      const std::string name = "shard-" + std::to_string(r) + "-of-2.h5";
      nnx::State mine;
      for (int i = r; i < 100; i += 2) mine.insert("layer" + std::to_string(i) + "/kernel", {nnx::Param, at::randn({1000 * 1000}), {}});
      ck::H5File f = ck::H5File::create((dir / name).string());
      auto pending = ck::write_state(f, "params", mine);
      for (const auto& info : ck::list_item(f, "params")) sources[info.path].pieces.push_back({name, info.checksum, info.shape});
      f.close(std::move(pending));
      for (const auto& [p, vs] : mine) all.insert(p, vs);
    }
    ck::H5File f = ck::H5File::create((dir / "checkpoint.h5").string());
    f.close(ck::write_state_virtual(f, "params", all, sources));
    templ = abstract_of(all);
  }
  ~TwoRankCheckpoint() { std::filesystem::remove_all(dir); }
};

void BM_RestoreTwoRankCheckpoint400MB(benchmark::State& st) {
  static TwoRankCheckpoint c;
  for (auto _ : st) {
    nnx::checkpoint::H5File f = nnx::checkpoint::H5File::open((c.dir / "checkpoint.h5").string());
    benchmark::DoNotOptimize(nnx::checkpoint::read_state(f, "params", c.templ));
  }
  st.SetBytesProcessed(st.iterations() * 400000000);
}
BENCHMARK(BM_RestoreTwoRankCheckpoint400MB)->Unit(benchmark::kMillisecond)->UseRealTime();

// What AsyncCheckpointer::save blocks for: copying 400 MB (100 fp32 tensors) into the previous
// snapshot's host buffers, against one memcpy per tensor on one thread.
void BM_SnapshotToHost400MB(benchmark::State& st) {
  nnx::checkpoint::Composite args{{"params", nnx::checkpoint::StandardSave(hundred_tensors(1000 * 1000))}};
  std::vector<at::Tensor> buffers;
  for (auto _ : st) benchmark::DoNotOptimize(nnx::checkpoint::snapshot_to_host(args, &buffers));
  st.SetBytesProcessed(st.iterations() * 400000000);
}
BENCHMARK(BM_SnapshotToHost400MB)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_Memcpy400MB(benchmark::State& st) {
  std::vector<at::Tensor> src, dst;
  for (int i = 0; i < 100; ++i) src.push_back(at::randn({1000 * 1000})), dst.push_back(at::empty({1000 * 1000}));
  for (auto _ : st)
    for (int i = 0; i < 100; ++i) std::memcpy(dst[i].data_ptr(), src[i].data_ptr(), 4000000);
  st.SetBytesProcessed(st.iterations() * 400000000);
}
BENCHMARK(BM_Memcpy400MB)->Unit(benchmark::kMillisecond)->UseRealTime();

// A sync save of 400 MB (100 fp32 tensors, fsync'd, each save a new step directory, the
// previous one deleted first) from tensors as libtorch allocates them (64-byte aligned: the
// direct write path stages them through page-aligned buffers; arg 0) and from page-aligned
// memory (written as it is; arg 1), so the cost of staging shows.
void BM_Save400MB(benchmark::State& st) {
  nnx::trainer::keep_freed_memory();
  const auto dir = std::filesystem::temp_directory_path() / ("nnx-microbench-save-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  nnx::State s = hundred_tensors(1000 * 1000);
  if (st.range(0))
    for (auto& [p, vs] : s) {
      void* mem = nullptr;
      if (::posix_memalign(&mem, 4096, 4000000) != 0) throw std::bad_alloc();
      vs.value = at::from_blob(mem, {1000 * 1000}, [](void* q) { std::free(q); }, at::kFloat).copy_(vs.value);
    }
  nnx::checkpoint::Checkpointer ck;
  int step = 0;
  for (auto _ : st) {
    std::filesystem::remove_all(dir / std::to_string(step - 1));
    ck.save(dir / std::to_string(step++), nnx::checkpoint::Composite{{"params", nnx::checkpoint::StandardSave(s)}});
  }
  std::filesystem::remove_all(dir);
  st.SetBytesProcessed(st.iterations() * 400000000);
}
BENCHMARK(BM_Save400MB)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(8);

void BM_RawRead400MB(benchmark::State& st) {
  auto& c = cached();
  for (auto _ : st) {
    int fd = ::open((c.dir / "raw").c_str(), O_RDONLY);
    std::vector<at::Tensor> out;
    for (int j = 0; j < 100; ++j) {
      at::Tensor t = at::empty({1000 * 1000});
      char* b = static_cast<char*>(t.data_ptr());
      size_t done = 0;
      while (done < 4000000) done += static_cast<size_t>(::read(fd, b + done, 4000000 - done));
      out.push_back(t);
    }
    ::close(fd);
  }
  st.SetBytesProcessed(st.iterations() * 400000000);
}
BENCHMARK(BM_RawRead400MB)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
