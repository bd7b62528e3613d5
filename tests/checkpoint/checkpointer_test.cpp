#include "nnx/checkpoint/async_checkpointer.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <fstream>
#include <random>
#include <thread>

#include "nnx/checkpoint/format/h5_file.h"
#include "nnx/framework/error.h"
#include "nnx/checkpoint/format/directory.h"
#include "nnx/checkpoint/format/schema.h"
#include "nnx/checkpoint/verify.h"
#include "test_util.h"

using namespace nnx;
using namespace nnx::checkpoint;
namespace stdfs = std::filesystem;

namespace {
State small_state(float v) {
  State s;
  s.insert("fc1/kernel", {Param, at::full({4, 8}, v), {}});
  s.insert("fc1/bias", {Param, at::arange(8, at::kFloat) + v, {}});
  s.insert("bn/mean", {BatchStat, at::full({8}, -v), {}});
  return s;
}
}  // namespace

TEST(Checkpointer, CompositeRoundTripAndPartialItems) {
  test::TempDir dir;
  Checkpointer ck;
  State params = small_state(1.0f);
  State opt;
  opt.insert("step", {OptState, at::scalar_tensor(int64_t(7)), {}});
  nlohmann::json config = {{"lr", 0.1}};
  ck.save(dir / "5", Composite{{"params", StandardSave(params)}, {"optimizer", StandardSave(opt)},
                               {"config", JsonSave(config)}},
          {{"step", 5}});
  EXPECT_TRUE(stdfs::exists(dir / "5" / kCheckpointFile));
  EXPECT_TRUE(stdfs::exists(dir / "5" / kMetadataFile));
  auto meta = read_metadata(dir / "5");
  EXPECT_EQ(meta["step"], 5);
  EXPECT_EQ(meta["items"]["config"], "json");
  Restored r = ck.restore(dir / "5", Composite{{"params", StandardRestore(params)}, {"config", JsonRestore()}});
  EXPECT_TRUE(r.state("params").equal(params));
  EXPECT_EQ(r.json_item("config"), config);
  EXPECT_THROW(r.state("optimizer"), Error);
  EXPECT_THROW(ck.restore(dir / "5", Composite{{"metrics", JsonRestore()}}), Error);
  // Never overwritten.
  EXPECT_THROW(ck.save(dir / "5", Composite{{"params", StandardSave(params)}}), Error);
  EXPECT_TRUE(verify(dir / "5").ok);
}

// HDF5's metadata block is sized to the state: a small checkpoint is no longer mostly the
// unused tail of a 256 KiB block (2.6 KiB of params took 272 KiB), large ones keep 256 KiB.
TEST(Checkpointer, SmallCheckpointsStaySmall) {
  EXPECT_EQ(H5File::meta_block_size(0), 4u << 10);
  EXPECT_EQ(H5File::meta_block_size(1 << 20), 16u << 10);
  EXPECT_EQ(H5File::meta_block_size(16 << 20), 256u << 10);
  EXPECT_EQ(H5File::meta_block_size(int64_t(4) << 30), 256u << 10);
  test::TempDir dir;
  State s;
  s.insert("layers/0/kernel", {Param, at::randn({16, 32}), {}});  // 2 KiB
  s.insert("layers/0/bias", {Param, at::randn({32}), {}});
  s.insert("layers/1/kernel", {Param, at::randn({32, 4}), {}});  // 512 B
  StandardCheckpointer ck;
  ck.save(dir / "small", s);
  const auto size = std::filesystem::file_size(dir / "small" / "checkpoint.h5");
  EXPECT_LT(size, 32u << 10) << "bytes on disk for 2.6 KiB of params";
  EXPECT_TRUE(ck.restore(dir / "small", s).equal(s));
}

TEST(Checkpointer, StandardCheckpointerInUnicodeDirectoryWithSpaces) {
  test::TempDir dir;
  stdfs::path p = dir / "my rüns ✓" / "ckpt 1";
  StandardCheckpointer ck;
  State s = small_state(2.0f);
  ck.save(p, s);
  // Template from abstract tensors (meta), as eval_shape gives.
  State templ;
  for (const auto& [path, vs] : s) templ.insert(path, {vs.kind, at::empty(vs.value.sizes(), vs.value.options().device(at::kMeta)), {}});
  State back = ck.restore(p, templ);
  EXPECT_TRUE(back.equal(s));
  EXPECT_TRUE(back.at("bn/mean").value.device().is_cpu());
}

TEST(Checkpointer, AsyncSaveHoldsValuesAtSaveTime) {
  test::TempDir dir;
  AsyncCheckpointer ck;
  State s = small_state(3.0f);
  State expected = s.clone();
  ck.save(dir / "1", Composite{{"params", StandardSave(s)}});
  // The caller changes its tensors at once; the checkpoint must not see it.
  for (auto& [p, vs] : s) vs.value.fill_(-99.0f);
  ck.wait_until_finished();
  State back = ck.restore(dir / "1", Composite{{"params", StandardRestore(expected)}}).state("params");
  EXPECT_TRUE(back.equal(expected)) << back.first_difference(expected);
}

// The snapshot copies contiguous tensors in 4 MiB pieces on several threads and everything else
// (views) through ATen; it reuses the previous snapshot's buffers when shapes and dtypes match.
TEST(Checkpointer, SnapshotToHostCopiesEveryKindOfTensorAndReusesBuffers) {
  State s;
  s.insert("big", {Param, at::randn({(10 << 20) / 4 + 3}), {}});  // 3 pieces, the last one short
  s.insert("view", {Param, at::randn({64, 64}).t(), {}});
  s.insert("offset_view", {Param, at::randn({5, 1 << 20}).narrow(0, 1, 3), {}});  // contiguous, mid-storage
  s.insert("bf16", {Param, at::randn({1000}).to(at::kBFloat16), {}});
  s.insert("mid", {Param, at::randn({(3 << 20) / 8 + 1}), {}});  // 1.5 MiB + 4 bytes: one piece
  s.insert("empty", {Param, at::empty({0, 5}), {}});
  s.insert("scalar", {Cache, at::scalar_tensor(int64_t(7), at::kLong), {}});
  for (int i = 0; i < 9; ++i) s.insert("many/p" + std::to_string(i), {Param, at::randn({(1 << 20) + i}), {}});
  Composite args{{"params", StandardSave(s)}, {"meta", JsonSave(nlohmann::json{{"k", 1}})}};
  std::vector<at::Tensor> buffers;
  std::vector<void*> ptrs;
  auto snapshot = [&] {
    Composite snap = snapshot_to_host(args, &buffers);
    ASSERT_EQ(snap.items().size(), 2u);
    const State& copy = snap.items()[0].second.get_if<StandardSave>()->state;
    EXPECT_TRUE(copy.equal(s)) << copy.first_difference(s);
    for (const auto& [p, vs] : copy) {
      EXPECT_TRUE(vs.value.is_contiguous()) << p;
      if (vs.value.numel() > 0) {
        EXPECT_NE(vs.value.data_ptr(), s.at(p).value.data_ptr()) << p;
      }
      // Buffers of 1 MiB or more are page-aligned (written with O_DIRECT without staging).
      const int64_t nbytes = vs.value.numel() * static_cast<int64_t>(vs.value.element_size());
      if (nbytes >= (1 << 20)) {
        EXPECT_EQ(reinterpret_cast<uintptr_t>(vs.value.data_ptr()) % 4096, 0u) << p;
      }
    }
    EXPECT_TRUE(snap.items()[1].second.holds<JsonSave>());
    ptrs.clear();
    for (const auto& [p, vs] : copy) ptrs.push_back(vs.value.data_ptr());
  };
  snapshot();
  const auto first = ptrs;
  for (auto& [p, vs] : s) vs.value.add_(1);  // new values, same shapes
  snapshot();
  EXPECT_EQ(first, ptrs);  // the same host buffers, refilled
}

// Orbax's rule for a failed async save: a wait on another thread raises it without clearing it;
// the saving thread's next wait, or its next save, raises it too, and then it is cleared.
TEST(Checkpointer, AnotherThreadsWaitDoesNotSwallowTheOwnersFailure) {
  test::TempDir dir;
  { std::ofstream(dir / "blocker") << "a file, not a directory"; }
  for (bool next_is_save : {false, true}) {
    AsyncCheckpointer ck;
    ck.save(dir / "blocker" / "1", Composite{{"params", StandardSave(small_state(1.0f))}});
    std::thread monitor([&] { EXPECT_THROW(ck.wait_until_finished(), Error); });
    monitor.join();
    const auto path = dir / (next_is_save ? "saved" : "waited");
    if (next_is_save) {
      EXPECT_THROW(ck.save(path, Composite{{"params", StandardSave(small_state(2.0f))}}), Error);
    } else {
      EXPECT_THROW(ck.wait_until_finished(), Error);
    }
    ck.wait_until_finished();  // cleared
    ck.save(path, Composite{{"params", StandardSave(small_state(3.0f))}});
    ck.wait_until_finished();
    EXPECT_TRUE(std::filesystem::exists(path / kMetadataFile));
  }
}

TEST(Checkpointer, FailedAsyncSaveSurfacesOnWaitAndLeavesNoTmp) {
  test::TempDir dir;
  { std::ofstream(dir / "blocker") << "a file, not a directory"; }
  AsyncCheckpointer ck;
  ck.save(dir / "blocker" / "1", Composite{{"params", StandardSave(small_state(1.0f))}});
  EXPECT_THROW(ck.wait_until_finished(), Error);
  ck.wait_until_finished();  // the error is reported once
  // A failing save into a valid directory (an abstract tensor) removes its tmp dir.
  State bad;
  bad.insert("x", {Param, at::empty({2}, at::TensorOptions().device(at::kMeta)), {}});
  Checkpointer sync;
  EXPECT_THROW(sync.save(dir / "2", Composite{{"params", StandardSave(bad)}}), Error);
  for (const auto& e : stdfs::directory_iterator(dir.path()))
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
}

TEST(Checkpointer, VerifyReportsCorruptionAndTruncation) {
  test::TempDir dir;
  Checkpointer ck;
  ck.save(dir / "1", Composite{{"params", StandardSave(small_state(1.0f))}});
  stdfs::copy(dir / "1", dir / "2", stdfs::copy_options::recursive);
  stdfs::resize_file(dir / "2" / kCheckpointFile, stdfs::file_size(dir / "2" / kCheckpointFile) - 100);
  auto r = verify(dir / "2");
  EXPECT_FALSE(r.ok);
  ASSERT_FALSE(r.problems.empty());
  EXPECT_NE(r.problems[0].find("truncated"), std::string::npos) << r.problems[0];
  EXPECT_THROW(ck.restore(dir / "2", Composite{{"params", StandardRestore(small_state(0))}}), Error);
  // Unknown format version.
  auto meta = read_metadata(dir / "1");
  meta["format_version"] = 99;
  stdfs::copy(dir / "1", dir / "3", stdfs::copy_options::recursive);
  { std::ofstream(dir / "3" / kMetadataFile, std::ios::trunc) << meta.dump(); }
  try {
    read_metadata(dir / "3");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("format version 99"), std::string::npos);
  }
  EXPECT_TRUE(verify(dir / "1").ok);
}

TEST(Checkpointer, H5pyReadsParamsAsGlobalArrays) {
  if (std::system("/usr/bin/python3 -c 'import h5py, numpy' 2>/dev/null") != 0) GTEST_SKIP() << "python3-h5py not installed";
  test::TempDir dir;
  State s;
  s.insert("fc1/kernel", {Param, at::arange(12, at::kFloat).reshape({3, 4}), {}});
  s.insert("emb/embedding", {Param, at::arange(6, at::kFloat).reshape({2, 3}).to(at::kBFloat16), {}});
  s.insert("step", {OptState, at::scalar_tensor(int64_t(42)), {}});
  Checkpointer().save(dir / "3", Composite{{"params", StandardSave(s)}, {"config", JsonSave(nlohmann::json{{"a", 1}})}});
  std::string cmd = "/usr/bin/python3 " + (test::tests_dir() / "checkpoint" / "read_with_h5py.py").string() + " '" +
                    (dir / "3" / "checkpoint.h5").string() + "'";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
}

TEST(Checkpointer, VerifyFlagsNonFiniteParams) {
  test::TempDir dir;
  State s = small_state(1.0f);
  s.at("fc1/bias").value[3] = std::numeric_limits<float>::quiet_NaN();
  Checkpointer().save(dir / "1", Composite{{"params", StandardSave(s)}});
  auto r = verify(dir / "1");
  EXPECT_FALSE(r.ok);
  ASSERT_EQ(r.problems.size(), 1u);
  EXPECT_NE(r.problems[0].find("/params/fc1/bias holds non-finite values"), std::string::npos) << r.problems[0];
}

namespace {
// Params and a 2 MiB tensor (raw data the structure checksum skips), a JSON item, saved to `p`.
Composite corruptible_item(float v) {
  State s = small_state(v);
  s.insert("big", {Param, at::full({512 << 10}, v), {}});
  return Composite{{"params", StandardSave(s)}, {"graphdef", JsonSave(nlohmann::json{{"layers", {1, 2, 3}}})}};
}
Composite corruptible_template() {
  State s = small_state(0);
  s.insert("big", {Param, at::zeros({512 << 10}), {}});
  return Composite{{"params", StandardRestore(s)}, {"graphdef", JsonRestore()}};
}
void flip(const stdfs::path& f, int64_t offset, char mask) {
  std::fstream io(f, std::ios::in | std::ios::out | std::ios::binary);
  io.seekg(offset);
  char c = 0;
  io.read(&c, 1);
  io.seekp(offset);
  c ^= mask;
  io.write(&c, 1);
}
}  // namespace

// The structure checksum covers everything HDF5 parses and skips exactly the large datasets'
// raw data; a restore checks it (or, for older checkpoints without one, the whole file) before
// HDF5 opens the file.
TEST(Checkpointer, CorruptStructureIsRejectedBeforeHdf5OpensTheFile) {
  test::TempDir dir;
  Checkpointer ck;
  ck.save(dir / "1", corruptible_item(1.0f));
  const auto meta = read_metadata(dir / "1");
  const auto& st = meta["files"][kCheckpointFile]["structure"];
  ASSERT_EQ(st["skip"].size(), 1u);  // the 2 MiB tensor only
  EXPECT_EQ(st["skip"][0][1].get<int64_t>(), int64_t(2) << 20);
  EXPECT_EQ(ck.restore(dir / "1", corruptible_template()).json_item("graphdef")["layers"][2], 3);
  // A byte of the superblock's neighbourhood (HDF5 metadata): not opened, named as such.
  stdfs::copy(dir / "1", dir / "2", stdfs::copy_options::recursive);
  flip(dir / "2" / kCheckpointFile, 100, 0x10);
  try {
    ck.restore(dir / "2", corruptible_template());
    FAIL();
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("'" + (dir / "2" / kCheckpointFile).string() + "' is corrupt: the checksum of its HDF5 structure"),
              std::string::npos) << m;
    EXPECT_NE(m.find("not opened"), std::string::npos) << m;
  }
  EXPECT_FALSE(verify(dir / "2").ok);
  // A byte of the skipped raw data: the dataset's own checksum names it.
  stdfs::copy(dir / "1", dir / "3", stdfs::copy_options::recursive);
  flip(dir / "3" / kCheckpointFile, st["skip"][0][0].get<int64_t>() + 12345, 0x01);
  try {
    ck.restore(dir / "3", corruptible_template());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/params/big"), std::string::npos) << e.what();
  }
  // A checkpoint written before structure checksums: the whole file is checked first.
  for (const char* name : {"4", "5"}) {
    stdfs::copy(dir / "1", dir / name, stdfs::copy_options::recursive);
    auto old = meta;
    old["files"][kCheckpointFile].erase("structure");
    std::ofstream(dir / name / kMetadataFile, std::ios::trunc) << old.dump(2);
  }
  EXPECT_EQ(ck.restore(dir / "4", corruptible_template()).state("params").at("big").value[7].item<float>(), 1.0f);
  flip(dir / "5" / kCheckpointFile, 100, 0x10);
  try {
    ck.restore(dir / "5", corruptible_template());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is corrupt: checksum"), std::string::npos) << e.what();
  }
  // A skip list that does not fit the file is an error, not a read past its end.
  stdfs::copy(dir / "1", dir / "6", stdfs::copy_options::recursive);
  auto bad = meta;
  bad["files"][kCheckpointFile]["structure"]["skip"][0][1] = int64_t(1) << 40;
  std::ofstream(dir / "6" / kMetadataFile, std::ios::trunc) << bad.dump(2);
  EXPECT_THROW(ck.restore(dir / "6", corruptible_template()), Error);
}

// The experiment, in process and deterministic: 1-8 random bytes of a checkpoint file
// flipped, 300 times. Every restore fails with nnx::Error (none crashes, none goes ahead
// silently), and every unchanged copy restores.
TEST(Checkpointer, RandomByteFlipsAlwaysFailCleanly) {
  test::TempDir dir;
  Checkpointer ck;
  ck.save(dir / "clean", corruptible_item(2.0f));
  const stdfs::path clean = dir / "clean" / kCheckpointFile;
  const auto size = static_cast<int64_t>(stdfs::file_size(clean));
  std::mt19937_64 rng(17);
  int failed = 0;
  for (int i = 0; i < 300; ++i) {
    const stdfs::path d = dir / ("c" + std::to_string(i));
    stdfs::copy(dir / "clean", d, stdfs::copy_options::recursive);
    const int n = 1 + static_cast<int>(rng() % 8);
    for (int k = 0; k < n; ++k) flip(d / kCheckpointFile, static_cast<int64_t>(rng() % size), static_cast<char>(1 + rng() % 255));
    try {
      ck.restore(d, corruptible_template());
    } catch (const Error&) {
      ++failed;
    }
    stdfs::remove_all(d);
  }
  EXPECT_EQ(failed, 300);
  EXPECT_EQ(ck.restore(dir / "clean", corruptible_template()).state("params").at("big").value[0].item<float>(), 2.0f);
}

// HDF5's own error stacks never reach the terminal, on any thread: a save past a file-size
// limit fails with one error naming the file, on the caller's thread and on the async writer's.
TEST(Checkpointer, FailedSavesPrintNoHdf5DiagnosticsOnAnyThread) {
  test::TempDir dir;
  const stdfs::path log = dir / "stderr.txt";
  State s;
  for (int i = 0; i < 4; ++i) s.insert("w" + std::to_string(i), {Param, at::full({256 << 10}, 1.0f), {}});
  // stderr to a file and a 1 MiB file-size limit, for this test only (restored below).
  const int saved_stderr = ::dup(2);
  const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT_GE(fd, 0);
  ::dup2(fd, 2);
  ::close(fd);
  auto old_xfsz = ::signal(SIGXFSZ, SIG_IGN);  // writes past the limit fail with EFBIG, not a kill
  struct rlimit old_lim {};
  ::getrlimit(RLIMIT_FSIZE, &old_lim);
  struct rlimit lim {1 << 20, old_lim.rlim_max};
  ::setrlimit(RLIMIT_FSIZE, &lim);
  std::vector<std::string> errors;
  try {
    Checkpointer().save(dir / "sync", Composite{{"params", StandardSave(s)}});
  } catch (const Error& e) {
    errors.push_back(e.what());
  }
  AsyncCheckpointer async;
  async.save(dir / "async", Composite{{"params", StandardSave(s)}});
  try {
    async.wait_until_finished();
  } catch (const Error& e) {
    errors.push_back(e.what());
  }
  ::setrlimit(RLIMIT_FSIZE, &old_lim);
  ::signal(SIGXFSZ, old_xfsz);
  ::fflush(stderr);
  ::dup2(saved_stderr, 2);
  ::close(saved_stderr);
  ASSERT_EQ(errors.size(), 2u);
  EXPECT_NE(errors[0].find((dir / "sync").string()), std::string::npos) << errors[0];
  EXPECT_NE(errors[1].find((dir / "async").string()), std::string::npos) << errors[1];
  std::ifstream in(log);
  const std::string err((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(err.find("HDF5-DIAG"), std::string::npos) << err.substr(0, 2000);
}

// A dataset of 64 MiB or more is read in 32 MiB pieces by several threads, hashed in order as
// they arrive: equal bytes back, and a flipped byte in its last or its first piece is found,
// every time (a piece the hash never reached would pass unverified).
TEST(Checkpointer, LargeDatasetsReadInPiecesRestoreExactlyAndVerify) {
  test::TempDir dir;
  State s;
  s.insert("huge", {Param, at::arange(int64_t(17) << 20, at::kFloat), {}});  // 68 MiB: 3 pieces
  Checkpointer ck;
  ck.save(dir / "1", Composite{{"params", StandardSave(s)}});
  State t;
  t.insert("huge", {Param, at::empty({int64_t(17) << 20}), {}});
  EXPECT_TRUE(ck.restore(dir / "1", Composite{{"params", StandardRestore(t)}}).state("params").equal(s));
  const auto st = read_metadata(dir / "1")["files"][kCheckpointFile]["structure"]["skip"][0];
  flip(dir / "1" / kCheckpointFile, st[0].get<int64_t>() + st[1].get<int64_t>() - 7, 0x20);
  try {
    ck.restore(dir / "1", Composite{{"params", StandardRestore(t)}});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/params/huge"), std::string::npos) << e.what();
  }
  flip(dir / "1" / kCheckpointFile, st[0].get<int64_t>() + st[1].get<int64_t>() - 7, 0x20);  // undone
  flip(dir / "1" / kCheckpointFile, st[0].get<int64_t>() + 11, 0x01);
  for (int i = 0; i < 20; ++i) EXPECT_THROW(ck.restore(dir / "1", Composite{{"params", StandardRestore(t)}}), Error) << i;
}
