// Item handlers: a user registers an item kind of its own (args types and handler) and saves
// and restores it beside the built-in kinds, without any change to the Checkpointer.
#include "nnx/checkpoint/handlers/registry.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <functional>

#include "nnx/checkpoint/async_checkpointer.h"
#include "nnx/checkpoint/format/json_item.h"
#include "nnx/checkpoint/handlers/state_handler.h"
#include "nnx/checkpoint/handlers/write_plan.h"
#include "nnx/framework/sharding.h"
#include "nnx/framework/error.h"
#include "nnx/checkpoint/format/directory.h"
#include "nnx/checkpoint/format/schema.h"
#include "nnx/checkpoint/verify.h"
#include "test_util.h"

using namespace nnx;
using namespace nnx::checkpoint;

namespace {

// A user's item kind: a tokenizer vocabulary, stored as one string attribute-free JSON array.
struct VocabSave {
  std::vector<std::string> words;
};
struct VocabRestore {};

class VocabHandler : public ItemHandler {
 public:
  std::string kind() const override { return "vocab"; }
  io::PendingWrites save(const SaveContext& ctx, const std::string& name, const ItemArgs& args) const override {
    write_json(ctx.file, name, args.get_if<VocabSave>()->words);
    return {};
  }
  void restore(const RestoreContext& ctx, const std::string& name, const ItemArgs&, Restored& out) const override {
    out.others[name] = read_json(ctx.file, name).get<std::vector<std::string>>();
  }
  nlohmann::json describe(const H5File& file, const std::string& name) const override {
    return {{"words", read_json(file, name).size()}};
  }
};

void register_vocab_once() {
  static bool done = [] {
    register_item_handler<VocabSave, VocabRestore>(std::make_shared<VocabHandler>());
    return true;
  }();
  (void)done;
}

}  // namespace

TEST(ItemHandlers, AUserKindSavesAndRestoresBesideTheBuiltInOnes) {
  register_vocab_once();
  test::TempDir dir;
  State params;
  params.insert("w", {Param, at::arange(6, at::kFloat), {}});
  const std::vector<std::string> words = {"<pad>", "hello", "wörld"};
  for (bool async : {false, true}) {
    const auto path = dir / (async ? "async" : "sync");
    Composite args{{"params", StandardSave(params)}, {"vocab", VocabSave{words}}, {"meta", JsonSave({{"a", 1}})}};
    if (async) {
      AsyncCheckpointer ck;
      ck.save(path, args);
      ck.wait_until_finished();
    } else {
      Checkpointer().save(path, args);
    }
    EXPECT_EQ(read_metadata(path)["items"]["vocab"], "vocab");
    auto r = Checkpointer().restore(path, Composite{{"vocab", VocabRestore{}}, {"params", StandardRestore(params)}});
    EXPECT_EQ(r.get<std::vector<std::string>>("vocab"), words);
    EXPECT_TRUE(r.state("params").equal(params));
    EXPECT_THROW(r.get<int>("vocab"), Error);  // not an int
    EXPECT_TRUE(verify(path).ok);
  }
  H5File f = H5File::open((dir / "sync" / kCheckpointFile).string());
  EXPECT_EQ(HandlerRegistry::global().for_kind("vocab", "vocab").describe(f, "vocab")["words"], 3);
}

TEST(ItemHandlers, ARestoreWithAnotherKindsArgumentsIsAClearError) {
  register_vocab_once();
  test::TempDir dir;
  Checkpointer().save(dir / "1", Composite{{"vocab", VocabSave{{"a"}}}});
  try {
    Checkpointer().restore(dir / "1", Composite{{"vocab", JsonRestore()}});
    FAIL() << "restored a 'vocab' item as JSON";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("item 'vocab' is a 'vocab' item; the restore arguments given read 'json' items"),
              std::string::npos) << e.what();
  }
  // Save arguments where restore arguments belong, and an args type nobody registered.
  struct Unregistered {};
  EXPECT_THROW(Checkpointer().restore(dir / "1", Composite{{"vocab", VocabSave{{"a"}}}}), Error);
  EXPECT_THROW(Checkpointer().save(dir / "2", Composite{{"x", Unregistered{}}}), Error);
  EXPECT_FALSE(std::filesystem::exists(dir / "2"));
}

TEST(ItemHandlers, RegistrationRejectsRepeatsAndBadKinds) {
  register_vocab_once();
  struct A {};
  struct B {};
  EXPECT_THROW((register_item_handler<VocabSave, B>(std::make_shared<VocabHandler>())), Error);  // VocabSave taken
  EXPECT_THROW((register_item_handler<A, B>(std::make_shared<VocabHandler>())), Error);          // kind "vocab" taken
  class BadKind : public VocabHandler {
   public:
    std::string kind() const override { return "no/slash"; }
  };
  EXPECT_THROW((register_item_handler<A, B>(std::make_shared<BadKind>())), Error);
  EXPECT_THROW((register_item_handler<StandardSave, B>(std::make_shared<VocabHandler>())), Error);
}

// The write plan of a multi-rank save: the State handler lists one entry per tensor, a user's
// handler lists its own, and the balancing weighs them together.
TEST(WritePlan, BalancesTheEntriesOfEveryItemByBytes) {
  State s;
  s.insert("big", {Param, at::zeros({1000}), {}});                  // 4000 bytes
  s.insert("mid", {Param, at::zeros({500}), {}});                   // 2000 bytes
  s.insert("step", {OptState, at::scalar_tensor(int64_t(3)), {}});  // a scalar: checkpoint.h5
  s.insert("mu", {OptState, at::zeros({8}), Metadata{{kShardingKey, PartitionSpec::sharded(0, 1).to_string()}}});
  const std::vector<WriteRequest> user = {{"table", 3000, Placement::kOneRank}, {"tiny", 10, Placement::kOneRank}};
  const WritePlan plan = WritePlan::balance({{"params", StateHandler().plan_writes("params", StandardSave(s))}, {"vocab", user}}, 2);
  // 4000 -> rank 0; 3000 -> rank 1; 2000 -> rank 1 (3000 < 4000); 10 -> rank 0 (4000 < 5000).
  EXPECT_EQ(plan.at("params", "big").rank, 0);
  EXPECT_EQ(plan.at("vocab", "table").rank, 1);
  EXPECT_EQ(plan.at("params", "mid").rank, 1);
  EXPECT_EQ(plan.at("vocab", "tiny").rank, 0);
  EXPECT_EQ(plan.at("params", "step").placement, Placement::kGlobalFile);
  EXPECT_FALSE(plan.at("params", "step").writes_shard(0));
  EXPECT_EQ(plan.at("params", "mu").placement, Placement::kEveryRank);
  EXPECT_TRUE(plan.at("params", "mu").writes_shard(0) && plan.at("params", "mu").writes_shard(1));
  EXPECT_TRUE(plan.at("params", "mid").writes_shard(1) && !plan.at("params", "mid").writes_shard(0));
  // The same requests give the same plan; another world size another one.
  const WritePlan again = WritePlan::balance({{"params", StateHandler().plan_writes("params", StandardSave(s))}, {"vocab", user}}, 2);
  EXPECT_EQ(plan.digest_text(), again.digest_text());
  EXPECT_NE(plan.digest_text(), WritePlan::balance({{"vocab", user}}, 2).digest_text());
  // Ties go to the lower rank, in "item/path" order.
  const WritePlan ties = WritePlan::balance({{"a", {{"y", 5, Placement::kOneRank}, {"x", 5, Placement::kOneRank}}}}, 3);
  EXPECT_EQ(ties.at("a", "x").rank, 0);
  EXPECT_EQ(ties.at("a", "y").rank, 1);
}

namespace {
// The message of the nnx::Error `f` throws ("" when it throws none).
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(WritePlan, AnUnlistedOrRepeatedEntryIsAClearError) {
  const WritePlan plan = WritePlan::balance({{"vocab", {{"table", 3, Placement::kOneRank}}}}, 2);
  EXPECT_NE(error_of([&] { plan.at("vocab", "words"); }).find("no writer for 'words' of item 'vocab'"), std::string::npos);
  EXPECT_NE(error_of([&] { plan.at("params", "table"); }).find("of item 'params'"), std::string::npos);
  const std::vector<WriteRequest> twice = {{"t", 1, Placement::kOneRank}, {"t", 2, Placement::kOneRank}};
  EXPECT_NE(error_of([&] { WritePlan::balance({{"vocab", twice}}, 2); }).find("item 'vocab' requested the write of 't' twice"),
            std::string::npos);
  EXPECT_TRUE(WritePlan().empty());
}
