// safetensors files against Python's safetensors library (and h5py, jax), run with the interop
// environment (tools/setup-interop.sh); without it these tests skip, saying so.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "nnx/checkpoint/format/safetensors.h"
#include "nnx/checkpoint/manager.h"
#include "test_util.h"
#include "tools/run_util.h"

namespace stdfs = std::filesystem;
using namespace nnx;
using namespace nnx::checkpoint;

namespace {

using test::interop_python;
std::string check_script() { return test::source_dir() + "/tests/tools/safetensors_check.py"; }
#define NEEDS_INTEROP_PYTHON() \
  if (interop_python().empty()) GTEST_SKIP() << "no .venv-interop (tools/setup-interop.sh makes it; it needs PyPI)"

}  // namespace

TEST(SafetensorsInterop, ExportLoadsInPythonBitwiseAsH5pyReadsIt) {
  NEEDS_INTEROP_PYTHON();
  test::TempDir dir;
  State s;
  s.insert("w/f32", {Param, at::randn({3, 5}), {}});
  s.insert("w/bf16", {Param, at::randn({7}).to(at::kBFloat16), {}});
  s.insert("w/f16", {Param, at::randn({2, 3}).to(at::kHalf), {}});
  s.insert("n/i64", {Param, at::arange(-3, 6, at::kLong), {}});
  s.insert("n/bool", {Param, at::rand({9}) > 0.5, {}});
  s.insert("big", {Param, at::randn({int64_t(1) << 20}), {}});  // 4 MiB: the direct write path
  {
    CheckpointManagerOptions o;
    o.enable_async_checkpointing = false;
    CheckpointManager m(dir / "ckpts", o);
    m.save(1, Composite{{"params", StandardSave(s)}});
  }
  const std::string out = (dir / "p.safetensors").string();
  auto ex = test::run(test::bin("nnx-ckpt") + " export " + (dir / "ckpts").string() + " 1 -o " + out);
  ASSERT_EQ(ex.exit_code, 0) << ex.output;
  auto py = test::run(interop_python() + " " + check_script() + " check-export " + out + " " +
                      (dir / "ckpts" / "1" / "checkpoint.h5").string() + " params");
  EXPECT_EQ(py.exit_code, 0) << py.output;
  EXPECT_NE(py.output.find("6 tensors (bfloat16, bool, float16, float32, int64) equal h5py's read bitwise"), std::string::npos)
      << py.output;
  // And back: nnx-cpp's reader gives the saved tensors, names dotted.
  const Safetensors back = read_safetensors(out);
  ASSERT_EQ(back.tensors.size(), s.size());
  for (const auto& [name, t] : back.tensors) {
    std::string path = name;
    std::replace(path.begin(), path.end(), '.', '/');
    EXPECT_TRUE(at::equal(t, s.at(path).value)) << name;
  }
  EXPECT_EQ(back.metadata.at("nnx.step"), "1");
}

TEST(SafetensorsInterop, FilesPythonWroteReadBitwiseAndImport) {
  NEEDS_INTEROP_PYTHON();
  test::TempDir dir;
  const std::string dtypes = (dir / "dtypes.safetensors").string();
  auto w = test::run(interop_python() + " " + check_script() + " write-dtypes " + dtypes);
  ASSERT_EQ(w.exit_code, 0) << w.output;
  const Safetensors f = read_safetensors(dtypes);
  std::map<std::string, at::Tensor> got(f.tensors.begin(), f.tensors.end());
  ASSERT_EQ(got.size(), 5u);
  EXPECT_TRUE(at::equal(got.at("f32"), at::arange(12, at::kFloat).reshape({3, 4}) * 0.5));
  EXPECT_TRUE(at::equal(got.at("f16"), at::arange(6, at::kFloat).to(at::kHalf) * 0.25));
  EXPECT_TRUE(at::equal(got.at("i64"), at::arange(5, at::kLong) - 2));
  EXPECT_TRUE(at::equal(got.at("bool"), at::arange(7, at::kLong).remainder(2) == 0));
  EXPECT_TRUE(at::equal(got.at("bf16"), (at::arange(4, at::kFloat) * 1.5).to(at::kBFloat16)));
  EXPECT_EQ(f.metadata.at("written_by"), "safetensors.numpy");

  // A PyTorch-named MLP written by safetensors.numpy becomes step 0 of a run, bitwise.
  const std::string mlp = (dir / "mlp.safetensors").string(), map = (dir / "map.json").string(),
                    run = (dir / "run").string();
  ASSERT_EQ(test::run(interop_python() + " " + check_script() + " write-mlp " + mlp + " 7").exit_code, 0);
  std::ofstream(map) << R"({"1.weight": {"path": "layers/1/kernel", "transpose": true}, "1.bias": "layers/1/bias",
                            "3.weight": {"path": "layers/4/kernel", "transpose": true}, "3.bias": "layers/4/bias"})";
  auto imp = test::run(test::bin("nnx-ckpt") + " import " + mlp + " --mapping " + map + " --config " + test::source_dir() +
                       "/configs/tiny_synthetic.yaml run.dir=" + run);
  ASSERT_EQ(imp.exit_code, 0) << imp.output;
  auto same = test::run(interop_python() + " -c \"import h5py, numpy as np, safetensors.numpy as sn; d = sn.load_file('" + mlp +
                        "'); f = h5py.File('" + run + "/checkpoints/0/checkpoint.h5'); "
                        "assert f['params/layers/1/kernel'][()].tobytes() == d['1.weight'].T.copy().tobytes(); "
                        "assert f['params/layers/4/bias'][()].tobytes() == d['3.bias'].tobytes(); print('ok')\"");
  EXPECT_EQ(same.exit_code, 0) << same.output;
  // A hostile file is one clear error and exit 2; no run is made.
  const std::string header = R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})";  // 16 bytes not there
  std::string bytes(8, '\0');
  bytes[0] = static_cast<char>(header.size());
  std::ofstream(dir / "bad.safetensors", std::ios::binary) << bytes << header;
  auto bad = test::run(test::bin("nnx-ckpt") + " import " + (dir / "bad.safetensors").string() + " --mapping " + map +
                       " --config " + test::source_dir() + "/configs/tiny_synthetic.yaml run.dir=" + (dir / "bad").string());
  EXPECT_EQ(bad.exit_code, 2) << bad.output;
  EXPECT_NE(bad.output.find("bad.safetensors: the tensors cover 16 data bytes, but the file holds 0 (a tensor ends past the end"),
            std::string::npos) << bad.output;
  EXPECT_FALSE(stdfs::exists(dir / "bad" / "checkpoints" / "0"));
}
