// Every public path that deletes a checkpoint tree, in a program whose first libraries are
// libtorch's, as a plain `g++ main.o -ltorch_cpu -lc10 ...` link orders them, with no LD_PRELOAD.
// PyTorch 2.x wheels export std::filesystem functions of their own from libtorch_cpu.so; with this
// order they win the symbol lookup, and in the 2.11 run on the GPU machine remove_all jumped to
// address 0 (nnx-train's retention, a TempDir). The library removes trees with io::remove_tree
// (nftw); this program proves every deleting path of it works under such a link.
#include <ATen/ATen.h>
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "nnx/checkpoint/args.h"
#include "nnx/checkpoint/handlers/registry.h"
#include "nnx/checkpoint/manager.h"
#include "nnx/framework/error.h"
#include "test_util.h"
#include "nnx/checkpoint/emergency/local_tier.h"

using namespace nnx;
using namespace nnx::checkpoint;
namespace stdfs = std::filesystem;

namespace {

// The library that serves `symbol` to this process (the global lookup order), or "".
std::string library_serving(const char* symbol) {
  void* address = ::dlsym(RTLD_DEFAULT, symbol);
  Dl_info info{};
  if (address == nullptr || ::dladdr(address, &info) == 0 || info.dli_fname == nullptr) return "";
  return info.dli_fname;
}

Composite small_state(float value) {
  State s;
  s.insert("w", {Param, at::full({64, 64}, value), {}});
  return Composite{{"params", StandardSave(s)}};
}

CheckpointManagerOptions options(int max_to_keep, bool async) {
  CheckpointManagerOptions o;
  o.max_to_keep = max_to_keep;
  o.enable_async_checkpointing = async;
  o.handle_preemption_signals = false;
  return o;
}

// A user's item kind whose save always fails: the Checkpointer must remove its temporary folder.
struct FailingSave {};
struct FailingRestore {};
class FailingHandler : public ItemHandler {
 public:
  std::string kind() const override { return "failing"; }
  io::PendingWrites save(const SaveContext&, const std::string& name, const ItemArgs&) const override {
    throw Error("item '" + name + "' fails on purpose");
  }
  void restore(const RestoreContext&, const std::string&, const ItemArgs&, Restored&) const override {}
  nlohmann::json describe(const H5File&, const std::string&) const override { return {}; }
};

bool holds_tmp(const stdfs::path& dir) {
  for (const auto& e : stdfs::directory_iterator(dir))
    if (e.path().filename().string().find(".tmp-") != std::string::npos) return true;
  return false;
}

}  // namespace

// Where std::filesystem resolves in this program; NNX_EXPECT_TORCH_FILESYSTEM (the torch2 build)
// requires libtorch_cpu.so, so that the checks below really run against libtorch's copies.
TEST(UserLink, ReportsWhereStdFilesystemResolves) {
  const std::string remove_all = library_serving("_ZNSt10filesystem10remove_allERKNS_7__cxx114pathE");
  const std::string remove = library_serving("_ZNSt10filesystem6removeERKNS_7__cxx114pathE");
  std::printf("std::filesystem::remove_all from %s\nstd::filesystem::remove from %s\n", remove_all.c_str(),
              remove.c_str());
  EXPECT_FALSE(remove_all.empty()) << "std::filesystem::remove_all is not resolved in this process";
  EXPECT_FALSE(remove.empty());
#ifdef NNX_EXPECT_TORCH_FILESYSTEM
  EXPECT_NE(remove_all.find("libtorch_cpu.so"), std::string::npos) << remove_all;
  EXPECT_NE(remove.find("libtorch_cpu.so"), std::string::npos) << remove;
#endif
}

TEST(UserLink, RetentionAndDeleteStepRemoveSteps) {
  test::TempDir dir;
  for (bool async : {false, true}) {
    const auto root = dir / (async ? "async" : "sync");
    CheckpointManager mgr(root, options(2, async));
    for (int64_t step = 1; step <= 4; ++step) mgr.save(step, small_state(float(step)));
    mgr.wait_until_finished();
    EXPECT_EQ(mgr.all_steps(), (std::vector<int64_t>{3, 4})) << root;  // retention removed 1 and 2
    EXPECT_FALSE(stdfs::exists(root / "1"));
    mgr.delete_step(3);
    EXPECT_EQ(mgr.all_steps(), (std::vector<int64_t>{4}));
    EXPECT_FALSE(stdfs::exists(root / "3"));
  }
}

TEST(UserLink, LeftoversAndAFailedSaveAreRemoved) {
  test::TempDir dir;
  const auto leftover = dir / "7.tmp-123-abc";  // a save killed mid-write, with nested files
  stdfs::create_directories(leftover / "nested");
  std::ofstream(leftover / "nested" / "shard-0-of-1.h5") << "partial";
  static const bool registered = [] {
    register_item_handler<FailingSave, FailingRestore>(std::make_shared<FailingHandler>());
    return true;
  }();
  ASSERT_TRUE(registered);
  for (bool async : {false, true}) {
    CheckpointManager mgr(dir.path(), options(3, async));
    EXPECT_FALSE(stdfs::exists(leftover));  // cleaned at start-up
    const Composite failing{{"params", StandardSave(State())}, {"bad", FailingSave{}}};
    EXPECT_THROW({
      mgr.save(async ? 2 : 1, failing);
      mgr.wait_until_finished();
    }, Error);
    EXPECT_FALSE(holds_tmp(dir.path())) << "a failed save left its temporary folder";
  }
}

TEST(UserLink, TheLocalTierRemovesItsFolder) {
  test::TempDir dir;
  checkpoint::emergency::LocalCheckpointOptions cfg;
  cfg.save_interval_steps = 1;
  cfg.directory = (dir / "local").string();
  cfg.async = false;  // every due save written (an async one is skipped while the previous writes)
  checkpoint::emergency::LocalTier tier(cfg, 0, 1);
  ASSERT_TRUE(tier.enabled());
  for (int64_t step = 1; step <= 4; ++step) tier.maybe_save(step, small_state(float(step)));  // retention too
  tier.wait_until_finished();
  EXPECT_TRUE(stdfs::exists(tier.step_path(4)));
  EXPECT_FALSE(stdfs::exists(tier.step_path(1)));
  tier.remove();
  EXPECT_FALSE(stdfs::exists(tier.directory()));
}
