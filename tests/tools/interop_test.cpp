// PyTorch interop (nnx-ckpt export / import, nnx-train --init-from-torch) and plots.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "test_util.h"
#include "tools/run_util.h"

namespace stdfs = std::filesystem;
using namespace nnx;

namespace {
std::string read_file(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
bool have_python_torch() { return test::run("/usr/bin/python3 -c 'import torch, h5py'").exit_code == 0; }
std::string train_cmd(const std::string& run_dir, const std::string& extra = "") {
  return test::bin("nnx-train") + " --config " + test::source_dir() + "/configs/tiny_synthetic.yaml run.dir=" + run_dir + " " + extra;
}
}  // namespace

// The SHA-256 of each tensor's bytes in a torch.load(weights_only=True) of argv[1], as JSON in
// argv[2]: torch.load's default since PyTorch 2.6, which refuses TorchScript's type tags.
constexpr char kSafeLoadScript[] = R"(import hashlib, json, sys, torch
d = torch.load(sys.argv[1], weights_only=True)
digest = lambda t: hashlib.sha256(bytes(t.contiguous().view(torch.uint8).flatten().tolist())).hexdigest()
json.dump({k: [list(v.shape), str(v.dtype), digest(v)] for k, v in d.items()}, open(sys.argv[2], "w"), sort_keys=True)
)";

TEST(Interop, ExportOpensInPythonTorchWithTheSameValues) {
  if (!have_python_torch()) GTEST_SKIP() << "python3-torch / python3-h5py not installed";
  test::TempDir dir;
  const std::string run = (dir / "run").string(), pt = (dir / "sd.pt").string();
  ASSERT_EQ(test::run(train_cmd(run)).exit_code, 0);
  auto ex = test::run(test::bin("nnx-ckpt") + " export " + run + " -o " + pt);
  ASSERT_EQ(ex.exit_code, 0) << ex.output;
  auto py = test::run("/usr/bin/python3 -c \"import torch,h5py,numpy as np; d=torch.load('" + pt +
                      "', weights_only=True); f=h5py.File('" + run + "/checkpoints/60/checkpoint.h5'); "
                      "assert sorted(d)==sorted(k.replace('/','.') for k in __import__('json').loads(f['params'].attrs['nnx_paths'])); "
                      "assert np.array_equal(d['layers.1.kernel'].numpy(), f['params/layers/1/kernel'][...]); print('ok')\"");
  EXPECT_EQ(py.exit_code, 0) << py.output;
  // The same bytes through the safe loader of Debian's torch 1.13 and, where tools/setup-torch2.sh
  // made it, PyPI's torch 2.15.
  std::ofstream(dir / "load.py") << kSafeLoadScript;
  const std::string debian_out = (dir / "debian.json").string(), torch2_out = (dir / "torch2.json").string();
  auto a = test::run("/usr/bin/python3 " + (dir / "load.py").string() + " " + pt + " " + debian_out);
  ASSERT_EQ(a.exit_code, 0) << a.output;
  const std::string torch2_python = test::source_dir() + "/.venv-torch2/bin/python";
  if (stdfs::exists(torch2_python)) {
    auto b = test::run(torch2_python + " " + (dir / "load.py").string() + " " + pt + " " + torch2_out);
    ASSERT_EQ(b.exit_code, 0) << b.output;
    EXPECT_EQ(read_file(debian_out), read_file(torch2_out));
  } else {
    std::printf("PyPI torch 2.15 not set up (tools/setup-torch2.sh): loaded with torch 1.13 only\n");
  }
  EXPECT_EQ(test::run(test::bin("nnx-ckpt") + " export " + run + " --format onnx -o x").exit_code, 2);
}

TEST(Interop, ImportFromAPyTorchStateDictThenFineTune) {
  if (!have_python_torch()) GTEST_SKIP() << "python3-torch / python3-h5py not installed";
  test::TempDir dir;
  const std::string sd = (dir / "sd.pt").string(), map = (dir / "map.json").string(), run = (dir / "run").string();
  auto made = test::run("/usr/bin/python3 -c \"import torch; torch.manual_seed(0); "
                        "m=torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16,32), torch.nn.ReLU(), torch.nn.Linear(32,4)); "
                        "torch.save(dict(m.state_dict()), '" + sd + "')\"");
  ASSERT_EQ(made.exit_code, 0) << made.output;
  std::ofstream(map) << R"({"1.weight": {"path": "layers/1/kernel", "transpose": true}, "1.bias": "layers/1/bias",
                            "3.weight": {"path": "layers/4/kernel", "transpose": true}, "3.bias": "layers/4/bias"})";
  auto imp = test::run(test::bin("nnx-ckpt") + " import " + sd + " --mapping " + map + " --config " + test::source_dir() +
                       "/configs/tiny_synthetic.yaml run.dir=" + run + " 'model.hidden=[32]'");
  ASSERT_EQ(imp.exit_code, 0) << imp.output;
  // Its hint repeats the overrides that built the model.
  EXPECT_NE(imp.output.find("tiny_synthetic.yaml 'model.hidden=[32]' run.dir=" + run + "` fine-tunes from it"), std::string::npos)
      << imp.output;
  auto same = test::run("/usr/bin/python3 -c \"import torch,h5py,numpy as np; d=torch.load('" + sd + "'); f=h5py.File('" + run +
                        "/checkpoints/0/checkpoint.h5'); assert np.array_equal(f['params/layers/1/kernel'][...], d['1.weight'].numpy().T); "
                        "assert np.array_equal(f['params/layers/4/bias'][...], d['3.bias'].numpy())\"");
  EXPECT_EQ(same.exit_code, 0) << same.output;
  auto tune = test::run(train_cmd(run));
  EXPECT_EQ(tune.exit_code, 0) << tune.output;
  EXPECT_NE(tune.output.find("resumed from step 0"), std::string::npos) << tune.output;
  // A wrong mapping names the tensor and both shapes.
  std::ofstream(map, std::ios::trunc) << R"({"1.weight": "layers/1/kernel", "1.bias": "layers/1/bias",
                            "3.weight": {"path": "layers/4/kernel", "transpose": true}, "3.bias": "layers/4/bias"})";
  auto bad = test::run(train_cmd((dir / "bad").string(), "--init-from-torch " + sd + " --mapping " + map));
  EXPECT_EQ(bad.exit_code, 2) << bad.output;
  EXPECT_NE(bad.output.find("'1.weight' -> 'layers/1/kernel': PyTorch shape [32, 16], model [16, 32]"), std::string::npos) << bad.output;
}

TEST(Plot, TrainerWritesAPngOfTheCurves) {
  if (test::run("gnuplot --version").exit_code != 0) GTEST_SKIP() << "gnuplot not installed";
  test::TempDir dir;
  const std::string run = (dir / "run").string();
  auto r = test::run(train_cmd(run, "--plot"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::ifstream png(run + "/metrics.png", std::ios::binary);
  char magic[4] = {0};
  png.read(magic, 4);
  EXPECT_EQ(std::string(magic + 1, 3), "PNG");
  EXPECT_GT(stdfs::file_size(run + "/metrics.png"), 2000u);
  EXPECT_EQ(test::run(test::bin("nnx-ckpt") + " plot " + run + " -o " + (dir / "again.png").string()).exit_code, 0);
  EXPECT_NE(test::run(test::bin("nnx-ckpt") + " plot " + (dir / "nothing").string()).exit_code, 0);
}
