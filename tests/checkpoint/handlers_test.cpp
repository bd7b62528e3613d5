// Item handlers: a user registers an item kind of its own (args types and handler) and saves
// and restores it beside the built-in kinds, without any change to the Checkpointer.
#include "nnx/checkpoint/handlers/registry.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "nnx/checkpoint/async_checkpointer.h"
#include "nnx/checkpoint/format/json_item.h"
#include "nnx/framework/error.h"
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
