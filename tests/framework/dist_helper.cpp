// Runs under nnx-launch in tests of distributed collectives and collective checkpoints.
// Usage: dist_helper MODE DIR
//   collectives   all-reduce, broadcast and gradient averaging give the expected values
//   save          every rank saves step 1 of replicated state; prints the restored checksum
//   partial-save  rank 1 never calls save(): rank 0 must fail within the timeout, not hang
//   rank1-fails   rank 1's share cannot be written: every rank must report the failure
//   corrupt-restore  a sharded state saves; a byte of rank 1's piece is flipped; the restore
//                 (where rank 0 reads only its own piece) must fail on every rank
//   disagree      rank 1 annotates a variable as sharded, rank 0 does not: the save must fail
//                 on every rank instead of writing a wrong global array
//   different-steps  rank 0 saves step 2 while rank 1 saves step 1: both must fail, nothing commits
//   preemption    rank 1 alone receives SIGTERM before step 5; should_save() must agree to save
//                 step 5 on every rank (and no earlier step), reached_preemption() true on each
//   fuzz-seeds    saves a small checkpoint (bf16, a sharded variable, a JSON item) as DIR/seed:
//                 the seeds of tests/fuzz/corpus/checkpoint
//   fixture       saves the format fixture (tests/checkpoint/fixture_state.h) as DIR/fixture
//   replicas      (2 ranks) send_step/recv_step move a committed step bit for bit, refuse a
//                 hostile header, report a sender's failure, leave an existing step alone, tell the
//                 sender when the receiver cannot commit; then
//                 PeerReplicas copies each rank's steps to the other, keeping max_to_keep; then
//                 LocalTier's agreed replication keeps a common step under lag
//   zero1         a ZeRO-1 optimizer (clipping, AdamW, amsgrad; uneven and 0-d params) steps as
//                 an unsharded one; its sharded state saves, restores, and reads back global
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <set>
#include <thread>

#include "nnx/checkpoint/checkpointer.h"
#include "nnx/checkpoint/format/json_item.h"
#include "nnx/checkpoint/format/state_reader.h"
#include "nnx/checkpoint/format/state_writer.h"
#include "nnx/checkpoint/handlers/state_handler.h"
#include "nnx/checkpoint/io/checksum.h"
#include "nnx/checkpoint/io/fs.h"
#include "nnx/checkpoint/verify.h"
#include "nnx/checkpoint/shard_planner.h"
#include "nnx/checkpoint/manager.h"
#include "nnx/framework/distributed.h"
#include "nnx/framework/fully_shard.h"
#include "nnx/framework/gradient_reducer.h"
#include "nnx/framework/error.h"
#include "nnx/framework/graph.h"
#include "nnx/framework/layers.h"
#include "nnx/framework/shard_collectives.h"
#include "nnx/framework/sharding.h"
#include "nnx/models/models.h"
#include "nnx/optim/optimizer.h"
#include "nnx/checkpoint/emergency/local_tier.h"
#include "nnx/checkpoint/emergency/peer_replicas.h"
#include "nnx/checkpoint/emergency/step_transfer.h"
#include "../checkpoint/fixture_state.h"

using namespace nnx;

// A failed check prints its condition and line (the launching test shows the output) and
// returns `code`, the helper's exit code.
#define FAIL_IF(code, ...)                                                                     \
  do {                                                                                         \
    if (__VA_ARGS__) {                                                                         \
      std::cerr << "dist_helper line " << __LINE__ << ": failed, " << #__VA_ARGS__ << std::endl; \
      return code;                                                                             \
    }                                                                                          \
  } while (0)

namespace {
// Prints `what` and, since nnx-launch stops the other ranks as soon as one exits non-zero, waits
// (up to 30 s) until every rank has reported, so the test sees every rank's line.
int report_and_wait(const std::string& dir, int r, int n, const std::string& what, int code) {
  std::cout << what << std::endl;
  std::ofstream(dir + "/reported-" + std::to_string(r)).put('1');
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  for (int k = 0; k < n && std::chrono::steady_clock::now() < deadline;)
    if (std::filesystem::exists(dir + "/reported-" + std::to_string(k))) ++k;
    else std::this_thread::sleep_for(std::chrono::milliseconds(10));
  return code;
}

// Flips one byte inside the first run of 1.0f values of `file`.
void flip_byte_in_ones(const std::string& file) {
  std::string bytes;
  {
    std::ifstream in(file, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  size_t pos = bytes.find(std::string("\x00\x00\x80\x3f\x00\x00\x80\x3f", 8));
  NNX_CHECK(pos != std::string::npos, "no float data in ", file);
  bytes[pos + 100] ^= 0x01;
  std::ofstream(file, std::ios::binary | std::ios::trunc) << bytes;
}

int sharded_modes(distributed::ProcessGroup& pg, const std::string& mode, const std::string& dir) {
  const int r = pg.rank(), n = pg.world_size();
  std::shared_ptr<distributed::ProcessGroup> group(&pg, [](distributed::ProcessGroup*) {});
  const auto spec = PartitionSpec::sharded(0, 2);
  State s;
  // 1 MiB per piece: raw data that the structure check before HDF5 opens a file skips (each
  // piece has its own checksum), so only the rank that reads the corrupt piece finds it.
  s.insert("w", {OptState, shard_of(at::full({262144, 2}, 1.0f), spec, Mesh{r, n}).clone(), {}});
  if (mode == "corrupt-restore" || r == 1) s.at("w").metadata[kShardingKey] = spec.to_string();
  s.insert("b", {Param, at::arange(1000, at::kFloat), {}});
  checkpoint::Checkpointer c;
  c.process_group = group;
  try {
    c.save(dir + "/1", checkpoint::Composite{{"state", checkpoint::StandardSave(s)}});
  } catch (const Error& e) {
    return report_and_wait(dir, r, n, "save failed on rank " + std::to_string(r) + ": " + e.what(), 20);
  }
  if (mode == "disagree") return report_and_wait(dir, r, n, "save succeeded on rank " + std::to_string(r), 0);
  pg.barrier();
  if (r == 0) flip_byte_in_ones(dir + "/1/shard-1-of-" + std::to_string(n) + ".h5");
  pg.barrier();
  try {
    c.restore(dir + "/1", checkpoint::Composite{{"state", checkpoint::StandardRestore(s)}});
  } catch (const Error& e) {
    return report_and_wait(dir, r, n, "restore failed on rank " + std::to_string(r) + ": " + e.what(), 20);
  }
  return report_and_wait(dir, r, n, "restore succeeded on rank " + std::to_string(r), 0);
}

std::shared_ptr<ModuleDict> zero1_model() {
  auto m = std::make_shared<ModuleDict>();
  int i = 0;
  for (std::vector<int64_t> shape : {std::vector<int64_t>{10, 7}, {7}, {7, 3}, {3}, {2, 5}, {}}) {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    m->register_variable("p" + std::to_string(i), Param(at::sin(at::arange(n, at::kFloat) + i).view(shape)));
    ++i;
  }
  return m;
}

int zero1(distributed::ProcessGroup& pg, const std::string& dir) {
  const int r = pg.rank(), n = pg.world_size();
  auto tx = [] {
    optim::AdamOptions ao;
    ao.learning_rate = 0.05;
    ao.weight_decay = 0.01;
    ao.amsgrad = true;
    return std::vector<std::shared_ptr<optim::Transform>>{optim::clip_by_global_norm(0.5), optim::adamw(ao)};
  };
  auto ma = zero1_model(), mb = zero1_model();
  optim::Optimizer sharded(ma, tx(), Param, Mesh{r, n}), whole(mb, tx());
  std::shared_ptr<distributed::ProcessGroup> group(&pg, [](distributed::ProcessGroup*) {});
  sharded.set_process_group(group);
  for (int step = 1; step <= 15; ++step) {
    State g;
    for (const auto& [path, vs] : state(*ma)) g.insert(path, {Param, at::cos(vs.value * step + 1.0), {}});
    State gb = g.clone();
    sharded.update(g);
    whole.update(gb);
  }
  // Params are whole on every rank and match the unsharded optimizer's; the state is this rank's rows.
  State pa = state(*ma), pb = state(*mb), sa = state(sharded), sb = state(whole);
  if (!pa.allclose(pb, 1e-6, 1e-7)) {
    std::cout << "params differ: " << pa.first_difference(pb) << std::endl;
    return 40;
  }
  for (const auto& [path, vs] : sa) {
    const auto spec = get_partition_spec(vs.metadata);
    if (!at::allclose(vs.value, shard_of(sb.at(path).value, spec, Mesh{r, n}), 1e-6, 1e-7)) {
      std::cout << "state " << path << " differs" << std::endl;
      return 41;
    }
  }
  checkpoint::Checkpointer c;
  c.process_group = group;
  c.save(dir + "/1", checkpoint::Composite{{"optimizer", checkpoint::StandardSave(sa)}});
  // Restored at the same size: this rank's rows, bitwise.
  State back = c.restore(dir + "/1", checkpoint::Composite{{"optimizer", checkpoint::StandardRestore(sa)}}).state("optimizer");
  if (!back.equal(sa)) {
    std::cout << "restore differs: " << back.first_difference(sa) << std::endl;
    return 42;
  }
  // checkpoint.h5 holds the global arrays: the unsharded optimizer's state.
  State global = checkpoint::read_state_untemplated(checkpoint::H5File::open(dir + "/1/checkpoint.h5"), "optimizer");
  if (!global.allclose(sb, 1e-6, 1e-7)) {
    std::cout << "global state differs: " << global.first_difference(sb) << std::endl;
    return 43;
  }
  std::cout << "zero1 ok on rank " << r << ": " << sa.nbytes() << " of " << sb.nbytes() << " state bytes" << std::endl;
  return 0;
}
// ZeRO-3: a model fully sharded (distributed::FullyShardedModel) and the same model replicated
// with averaged gradients (ZeRO-0), each rank on its slice of one global batch, 50 steps of
// clip_by_global_norm + AdamW. The sharded params, saved as global arrays, must be within 1e-6 of
// the replicated ones, and so must the last step's loss and the BatchStats; the Rngs counts are
// equal. A checkpoint saved at 3 ranks (dir/<type>-3, when present) restores into this world
// size's shards bitwise.
//
// Adam's eps is 0.1 here, not 1e-8: some params get a gradient of zero in exact arithmetic (a
// conv bias that feeds a BatchNorm, the key part of the attention's qkv bias: softmax ignores a
// shift of every logit), so what they get is rounding noise whose sign depends on the order of
// the ranks' sums, and with eps 1e-8 Adam turns that noise into steps of the learning rate,
// apart between any two reduction orders. With eps 0.1 such noise moves nothing, and the
// params with a gradient still move (by up to the learning rate times g / (|g| + 0.1)).
std::shared_ptr<Module> fsdp_model(const std::string& type) {
  nlohmann::json c;
  if (type == "MLP") c = {{"in_features", 6}, {"hidden", {16, 12}}, {"num_classes", 3}, {"dropout", 0.1}};
  if (type == "CNN") c = {{"in_channels", 1}, {"image_size", 8}, {"channels", {4, 6}}, {"hidden", 10}, {"num_classes", 3}};
  if (type == "GPT") c = {{"vocab_size", 11}, {"block_size", 8}, {"d_model", 16}, {"num_heads", 2}, {"num_layers", 2}, {"dropout", 0.1}};
  return models::build_model(type, c, std::make_shared<Rngs>(std::map<std::string, uint64_t>{{"params", 3}, {"dropout", 4}}));
}

// This rank's slice of the global batch of 12 (inputs, integer targets).
std::pair<at::Tensor, at::Tensor> fsdp_batch(const std::string& type, int r, int n, int step) {
  const int64_t b = 12, per = b / n;
  at::Tensor x, y;
  if (type == "GPT") {
    x = (at::arange(b * 8, at::kLong).reshape({b, 8}) * (7 + step) + 3) % 11;
    y = (x * 5 + 1) % 11;
  } else {
    const std::vector<int64_t> shape = type == "MLP" ? std::vector<int64_t>{b, 6} : std::vector<int64_t>{b, 1, 8, 8};
    x = at::sin(at::arange(b * (type == "MLP" ? 6 : 64), at::kFloat).reshape(shape) * (0.37 + 0.01 * step));
    y = at::arange(b, at::kLong) % 3;
  }
  return {x.narrow(0, r * per, per), y.narrow(0, r * per, per)};
}

at::Tensor fsdp_loss(const at::Tensor& logits, const at::Tensor& y) {
  return at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}), y.reshape({-1}));
}

int fsdp(const std::shared_ptr<distributed::ProcessGroup>& pg, checkpoint::Checkpointer& c, const std::string& type,
         const std::string& dir) {
  const int r = pg->rank(), n = pg->world_size();
  auto tx = [] {
    optim::AdamOptions ao(0.01);
    ao.eps = 0.1;
    return std::vector<std::shared_ptr<optim::Transform>>{optim::clip_by_global_norm(1.0), optim::adamw(ao)};
  };
  auto whole = fsdp_model(type), sharded = fsdp_model(type), unprefetched = fsdp_model(type);
  distributed::FullyShardedModel fs(sharded, pg);
  distributed::FullyShardOptions no_prefetch;
  no_prefetch.prefetch = false;
  distributed::FullyShardedModel fs_off(unprefetched, pg, no_prefetch);
  optim::Optimizer opt_whole(whole, tx()), opt_sharded(sharded, tx(), Param, Mesh{r, n}),
      opt_off(unprefetched, tx(), Param, Mesh{r, n});
  opt_sharded.set_process_group(pg);
  opt_off.set_process_group(pg);
  // The MLP's root holds no param, so its own forward() runs the units too, without
  // FullyShardedModel::forward() starting each pass: prefetched gathers then cross optimizer
  // steps, and must be refused as stale (their shards changed).
  auto direct = fsdp_model(type);
  std::unique_ptr<distributed::FullyShardedModel> fs_direct;
  std::unique_ptr<optim::Optimizer> opt_direct;
  if (type == "MLP") {
    fs_direct = std::make_unique<distributed::FullyShardedModel>(direct, pg);
    opt_direct = std::make_unique<optim::Optimizer>(direct, tx(), Param, Mesh{r, n});
    opt_direct->set_process_group(pg);
  }
  double loss_whole = 0, loss_sharded = 0;
  for (int step = 0; step < 50; ++step) {
    auto [x, y] = fsdp_batch(type, r, n, step);
    zero_grad(*whole);
    at::Tensor la = fsdp_loss(whole->forward(x), y);
    la.backward();
    State g = grads(*whole);
    distributed::all_reduce_mean(g, *pg);
    opt_whole.update(g);
    zero_grad(*sharded);
    at::Tensor lb = fsdp_loss(fs.forward(x), y);
    lb.backward();
    opt_sharded.update(grads(*sharded));
    zero_grad(*unprefetched);
    fsdp_loss(fs_off.forward(x), y).backward();
    opt_off.update(grads(*unprefetched));
    if (opt_direct) {
      zero_grad(*direct);
      fsdp_loss(direct->forward(x), y).backward();
      opt_direct->update(grads(*direct));
    }
    std::vector<at::Tensor> both = {la.detach().reshape({1}), lb.detach().reshape({1})};
    pg->all_reduce_sum(both);  // the global batch's loss, as each rank's mean
    loss_whole = both[0].item<double>();
    loss_sharded = both[1].item<double>();
  }
  if (std::abs(loss_whole - loss_sharded) > 1e-6 * n) {
    std::cout << type << ": the last loss differs: " << loss_whole / n << " vs " << loss_sharded / n << std::endl;
    return 56;
  }
  // Prefetch changes when the gathers run, not what they carry: the same params, bitwise. Each
  // unit but the first of a forward (from the second step, in the first step's order) and each
  // but the last of a backward was gathered before it was needed.
  FAIL_IF(57, !state(*unprefetched).equal(state(*sharded)));
  FAIL_IF(59, opt_direct && !state(*direct).equal(state(*sharded)));
  const auto units = static_cast<int64_t>(fs.unit_paths().size());
  const distributed::GatherStats on = fs.gather_stats(), off = fs_off.gather_stats();
  if (on.prefetched != 99 * (units - 1) || off.prefetched != 0 || on.gathers != off.gathers) {
    std::cout << type << ": " << on.prefetched << " of " << on.gathers << " gathers prefetched (" << off.prefetched
              << " of " << off.gathers << " without prefetch), expected " << 99 * (units - 1) << std::endl;
    return 58;
  }
  const std::string path = dir + "/" + type + "-" + std::to_string(n);
  const State mine = state(*sharded, Param);
  c.save(path, checkpoint::Composite{{"params", checkpoint::StandardSave(mine)}});
  State global = checkpoint::read_state_untemplated(checkpoint::H5File::open(path + "/checkpoint.h5"), "params");
  const State ref = state(*whole, Param);
  for (const auto& [p, vs] : ref) {
    FAIL_IF(50, !global.contains(p) || global.at(p).value.sizes() != vs.value.sizes());
    const double d = (global.at(p).value - vs.value).abs().max().item<double>();
    if (d > 1e-6) {
      std::cout << type << ": param " << p << " differs from ZeRO-0 by " << d << std::endl;
      return 51;
    }
  }
  FAIL_IF(52, !state(*sharded, BatchStat).allclose(state(*whole, BatchStat), 0, 1e-6));
  FAIL_IF(53, !state(*sharded, RngCount).equal(state(*whole, RngCount)));
  for (const auto& [p, vs] : mine)  // this rank's rows, annotated
    FAIL_IF(54, !at::equal(vs.value, shard_of(global.at(p).value, get_partition_spec(vs.metadata), Mesh{r, n})));
  const std::string from3 = dir + "/" + type + "-3";
  if (n != 3 && std::filesystem::exists(from3)) {  // saved by 3 ranks, restored into this world size's shards
    State back = c.restore(from3, checkpoint::Composite{{"params", checkpoint::StandardRestore(mine)}}).state("params");
    State at3 = checkpoint::read_state_untemplated(checkpoint::H5File::open(from3 + "/checkpoint.h5"), "params");
    for (const auto& [p, vs] : back)
      FAIL_IF(55, !at::equal(vs.value, shard_of(at3.at(p).value, get_partition_spec(vs.metadata), Mesh{r, n})));
  }
  std::cout << "fsdp " << type << " ok on rank " << r << ": " << fs.unit_paths().size() << " units, " << mine.nbytes()
            << " of " << ref.nbytes() << " param bytes" << std::endl;
  return 0;
}

// A unit that SIGKILLs its process in its forward once armed: the next unit's prefetched
// all-gather is then in flight on every rank.
class Tripwire : public ModuleBase<Tripwire> {
 public:
  explicit Tripwire(Rngs& rngs) { register_module("linear", std::make_shared<Linear>(4, 4, rngs)); }
  std::string type_name() const override { return "Tripwire"; }
  nlohmann::json config() const override { return nlohmann::json::object(); }
  at::Tensor forward(const at::Tensor& x) override {
    if (armed) ::kill(::getpid(), SIGKILL);
    return child_ptr("linear")->forward(x);
  }
  static inline bool armed = false;
};

// ZeRO-3 over 3 units (linear, tripwire, linear); rank 1 dies inside the second unit at step 3.
// The others must fail on their own (exit 1) and name rank 1. Prints each step it finished.
int die_in_gather(const std::shared_ptr<distributed::ProcessGroup>& pg) {
  Rngs rngs(std::map<std::string, uint64_t>{{"params", 5}});
  auto model = std::make_shared<Sequential>();
  model->push_back(std::make_shared<Linear>(4, 4, rngs));
  model->push_back(std::make_shared<Tripwire>(rngs));
  model->push_back(std::make_shared<Linear>(4, 2, rngs));
  distributed::FullyShardedModel fs(model, pg);
  try {
    for (int step = 1; step <= 5; ++step) {
      Tripwire::armed = step == 3 && pg->rank() == 1;
      fs.forward(at::ones({2, 4})).sum().backward();
      std::cout << "step " << step << " done on rank " << pg->rank() << std::endl;
    }
  } catch (const Error& e) {
    std::cout << "failed on rank " << pg->rank() << ": " << e.what() << std::endl;
    return e.exit_code();
  }
  return 0;
}

// Steps 1..8 with saves every 1000 steps; rank 1 raises SIGTERM at step 5.
int preemption(const std::shared_ptr<distributed::ProcessGroup>& pg, const std::string& dir) {
  checkpoint::CheckpointManagerOptions o;
  o.enable_async_checkpointing = false;
  o.save_interval_steps = 1000;
  o.process_group = pg->new_group("ckpt");
  o.handle_preemption_signals = true;
  checkpoint::CheckpointManager mgr(dir, o);
  State s;
  s.insert("w", {Param, at::arange(100, at::kFloat), {}});
  for (int64_t step = 1; step <= 8; ++step) {
    if (step == 5 && pg->rank() == 1) ::raise(SIGTERM);
    if (!mgr.should_save(step)) continue;
    const bool preempted = mgr.reached_preemption(step);
    mgr.save(step, checkpoint::Composite{{"params", checkpoint::StandardSave(s)}}, {}, /*force=*/true);
    std::cout << "saved step " << step << " on rank " << pg->rank() << " (preempted " << preempted << ", signal here "
              << (checkpoint::preemption_signal() != 0) << ")" << std::endl;
    return step == 5 && preempted ? 0 : 50;  // a preempted run stops after its save
  }
  std::cout << "no save on rank " << pg->rank() << std::endl;
  return 51;
}
}  // namespace

// A committed step `step` of a small state in a manager at `dir` (its directory).
std::filesystem::path save_small_step(const std::filesystem::path& dir, int64_t step, int r) {
  checkpoint::CheckpointManager m(dir);
  State s;
  s.insert("w", {Param, at::arange(1000, at::kFloat) * static_cast<float>(step + 10 * r), {}});
  m.save(step, checkpoint::StandardSave(s), nlohmann::json::object(), /*force=*/true);
  m.wait_until_finished();
  return m.step_path(step);
}

bool same_bytes(const std::filesystem::path& a, const std::filesystem::path& b) {
  for (const char* f : {"checkpoint.h5", "_CHECKPOINT_METADATA"})
    if (checkpoint::io::read_file(a / f) != checkpoint::io::read_file(b / f)) return false;
  return true;
}

// Expects `f` to throw an nnx::Error whose message contains `what`.
template <class F>
bool throws_with(F&& f, const std::string& what) {
  try {
    f();
  } catch (const Error& e) {
    if (std::string(e.what()).find(what) != std::string::npos) return true;
    std::cerr << "unexpected error: " << e.what() << "\n";
  }
  return false;
}

int step_transfers(distributed::ProcessGroup& pg, const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  const int r = pg.rank();
  if (r == 0) save_small_step(dir / "src", 7, 0);
  if (r == 1) {
    std::filesystem::create_directories(dir);
    checkpoint::io::write_file_synced(dir / "blocker", "a file where a directory would go");
  }
  pg.barrier();
  const fs::path src = dir / "src" / "7";
  auto target = [&](int64_t s) { return dir / "dst" / std::to_string(s); };
  if (r == 0) {
    FAIL_IF(20, checkpoint::emergency::send_step(pg, src, 7, 1, 5) != static_cast<int64_t>(fs::file_size(src / "checkpoint.h5") + fs::file_size(src / "_CHECKPOINT_METADATA")));
    checkpoint::emergency::send_step(pg, src, 7, 1, 5);  // again: the step exists there
    // The peer cannot commit it: its answer says so.
    FAIL_IF(28, !throws_with([&] { checkpoint::emergency::send_step(pg, src, 7, 1, 5); }, "rank 1 did not commit step 7"));
    FAIL_IF(21, !throws_with([&] { checkpoint::emergency::send_step(pg, dir / "missing", 8, 1, 5); }, "missing"));
    const std::string hostile = R"({"step":9,"files":[{"name":"../escape","size":4}]})";
    pg.send(at::tensor({static_cast<int64_t>(hostile.size())}, at::kLong), 1, 6);
    at::Tensor h = at::empty({static_cast<int64_t>(hostile.size())}, at::kByte);
    std::memcpy(h.data_ptr(), hostile.data(), hostile.size());
    pg.send(h, 1, 6);
  } else {
    const auto got = checkpoint::emergency::recv_step(pg, 0, 5, target);
    FAIL_IF(22, !got.committed || got.step != 7 || !same_bytes(src, target(7)) || !checkpoint::verify(target(7)).ok);
    FAIL_IF(23, checkpoint::emergency::recv_step(pg, 0, 5, target).committed);  // left alone
    auto blocked = [&](int64_t s) { return dir / "blocker" / std::to_string(s); };
    FAIL_IF(29, !throws_with([&] { checkpoint::emergency::recv_step(pg, 0, 5, blocked); }, "cannot create"));
    FAIL_IF(24, !throws_with([&] { checkpoint::emergency::recv_step(pg, 0, 5, target); }, "could not send its step"));
    FAIL_IF(25, !throws_with([&] { checkpoint::emergency::recv_step(pg, 0, 6, target); }, "not a plain name"));
    FAIL_IF(26, fs::exists(dir / "escape") || fs::exists(target(8)) || fs::exists(target(9)));
    for (const auto& e : fs::directory_iterator(dir / "dst"))  // no temporary directory left behind
      FAIL_IF(27, e.path().filename() != "7");
  }
  pg.barrier();
  return 0;
}

// Each rank offers steps 1..3 of its own tier and waits until each went out; the peer keeps
// the newest two, bit for bit.
int peer_replicas(distributed::ProcessGroup& pg, const std::filesystem::path& dir) {
  const int r = pg.rank();
  const auto host = [&](int k) { return dir / ("host-" + std::to_string(k)); };
  checkpoint::emergency::PeerReplicas replicas(pg.new_group("replicas-test"), host(r), 1, std::make_shared<checkpoint::LatestN>(2));
  FAIL_IF(30, replicas.sources() != std::vector<int>{1 - r});
  for (int64_t s = 1; s <= 3; ++s) {
    replicas.offer(s, save_small_step(host(r) / "own", s, r), [] { return true; });
    for (int i = 0; i < 3000 && replicas.copies_sent() < s; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    FAIL_IF(31, replicas.copies_sent() != s);
  }
  replicas.stop_sending();
  pg.barrier();
  replicas.stop_receiving();
  FAIL_IF(32, replicas.steps_of(1 - r) != std::vector<int64_t>{2, 3} || replicas.copies_received() != 3);
  for (int64_t s : {2, 3})
    FAIL_IF(33, !same_bytes(host(1 - r) / "own" / std::to_string(s), replicas.step_path(1 - r, s)));
  FAIL_IF(34, replicas.bytes_sent() <= 0);
  std::cout << "replicas ok on rank " << r << "\n";
  return 0;
}

// The local tier's agreed replication under lag: 40 async local saves of 8 MB, a few ms apart
// (transfers take longer, so most steps are not replicated), max_to_keep 1. Once the ranks
// agreed on a step every peer confirmed holding, that step (the same on both ranks) is in this
// rank's own folder and among its replicas on the peer after every later save (what a replaced
// host resumes from), and at the end no folder holds more than max_to_keep + 2 steps
// (replicas: max_to_keep + 1).
int replica_agreement(distributed::ProcessGroup& pg, const std::filesystem::path& dir) {
  const int r = pg.rank(), peer = 1 - r;
  checkpoint::emergency::LocalCheckpointOptions cfg;
  cfg.save_interval_steps = 1;
  cfg.max_to_keep = 1;
  cfg.directory = dir.string();
  checkpoint::emergency::LocalTier tier(cfg, r, 2, std::shared_ptr<distributed::ProcessGroup>(&pg, [](auto*) {}));
  const auto own = dir / ("rank-" + std::to_string(r) + "-of-2");
  const auto at_peer = dir / ("rank-" + std::to_string(peer) + "-of-2") / "replicas" / ("rank-" + std::to_string(r));
  auto steps = [](const std::filesystem::path& p) {
    checkpoint::CheckpointManagerOptions ro;
    ro.read_only = true;
    return std::filesystem::exists(p) ? checkpoint::CheckpointManager(p, ro).all_steps() : std::vector<int64_t>{};
  };
  int64_t agreed = -1;
  for (int64_t step = 1; step <= 40; ++step) {
    State s;  // fresh values each step (the deferred snapshot may still be copying the last)
    s.insert("w", {Param, at::full({2 << 20}, static_cast<float>(step)), {}});
    tier.maybe_save(step, checkpoint::Composite{{"params", checkpoint::StandardSave(s)}});
    if (const int64_t f = tier.replicated_step(); f >= 0) {
      std::vector<at::Tensor> both = {at::tensor({double(f), -double(f)}, at::kDouble)};
      pg.all_reduce_max(both);  // the same on both ranks: max == -max(-f)
      FAIL_IF(40, both[0][0].item<double>() != -both[0][1].item<double>());
      const auto mine = steps(own), theirs = steps(at_peer);
      const auto has = [f](const std::vector<int64_t>& v) { return std::find(v.begin(), v.end(), f) != v.end(); };
      if (!has(mine) || !has(theirs)) {
        std::cerr << "rank " << r << " after step " << step << ": step " << f << " is not both here and at the peer\n";
        return 41;
      }
      // One more while a step just committed waits for retention (as in any manager).
      if (mine.size() > 4 || theirs.size() > 3) {
        std::cerr << "rank " << r << " after step " << step << ": " << mine.size() << " own steps, " << theirs.size()
                  << " replicas at the peer\n";
        return 42;
      }
      agreed = f;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(3));
  }
  tier.wait_until_finished();
  tier.wait_for_replicas();
  const int64_t copies = tier.replicas()->copies_sent();
  tier.stop_replicas();
  FAIL_IF(43, agreed < 0 || copies < 1);
  FAIL_IF(44, steps(own).size() > 3 || steps(at_peer).size() > 2);
  std::cout << "agreement ok on rank " << r << ": " << copies << " of 40 local steps replicated\n";
  return 0;
}

// GradientReducer against all_reduce_mean after backward: two identical models, rank-specific
// batches, two micro-batches accumulated (the reducer armed for the last), two steps with the
// Params given new tensors between them; small buckets so that several are in flight. Bitwise equal with 2 ranks (a + b does not depend on
// bucketing); within 1e-6 with more (Gloo's ring may sum in another order per buffer size).
int reducer_check(const std::shared_ptr<distributed::ProcessGroup>& pg) {
  const int r = pg->rank(), n = pg->world_size();
  auto make = [] {
    Rngs rngs(0);
    auto m = std::make_shared<Sequential>();
    m->push_back(std::make_shared<Linear>(16, 64, rngs));
    m->push_back(std::make_shared<ReLU>());
    m->push_back(std::make_shared<Linear>(64, 64, rngs));
    m->push_back(std::make_shared<ReLU>());
    m->push_back(std::make_shared<Linear>(64, 4, rngs));
    return m;
  };
  auto overlapped = make(), after = make();
  distributed::GradientReducer reducer(*overlapped, pg, /*bucket_bytes=*/4096);
  at::manual_seed(r);
  for (int step = 0; step < 2; ++step) {
    if (step == 1) {  // new tensors in the Params, as a restore's update() puts them: hooked again
      State same = state(*overlapped);
      for (auto& [path, vs] : same) vs.value = vs.value.detach().clone();
      const void* before = state(*overlapped, Param).begin()->second.value.unsafeGetTensorImpl();
      update(*overlapped, same);
      FAIL_IF(21, state(*overlapped, Param).begin()->second.value.unsafeGetTensorImpl() == before);
    }
    zero_grad(*overlapped, false);
    zero_grad(*after, false);
    for (int micro = 0; micro < 2; ++micro) {
      const at::Tensor x = at::randn({8, 16}), y = at::randint(0, 4, {8}, at::kLong);
      if (micro == 1) reducer.arm();
      at::cross_entropy_loss(overlapped->forward(x), y).backward();
      at::cross_entropy_loss(after->forward(x), y).backward();
    }
    reducer.finish();
    distributed::all_reduce_mean(grads(*after), *pg);
    const State a = grads(*overlapped), b = grads(*after);
    for (const auto& [path, vs] : a) {
      const bool same = n == 2 ? at::equal(vs.value, b.at(path).value) : at::allclose(vs.value, b.at(path).value, 1e-6, 1e-7);
      if (!same) {
        std::cout << "rank " << r << " step " << step << ": " << path << " differs\n";
        return 20;
      }
    }
  }
  std::cout << "reducer ok on rank " << r << ": " << reducer.num_buckets() << " buckets\n";
  return 0;
}

int main(int argc, char** argv) {
  FAIL_IF(2, argc != 3);
  const std::string mode = argv[1], dir = argv[2];
  // One intra-op thread per rank: tests start up to 4 ranks on a 2-core machine, where
  // libtorch 2.x's OpenMP teams spinning at their barriers slowed a 21 s test past 300 s.
  at::set_num_threads(1);
  try {
    auto env = distributed::env_from_environment();
    auto pg = distributed::ProcessGroup::create(env, std::chrono::seconds(mode == "partial-save" ? 3 : mode == "die-in-gather" ? 20 : 60));
    const int r = pg->rank(), n = pg->world_size();
    if (mode == "collectives") {
      std::vector<at::Tensor> v = {at::full({3}, static_cast<float>(r + 1))};
      pg->all_reduce_sum(v);
      FAIL_IF(10, !at::equal(v[0], at::full({3}, static_cast<float>(n * (n + 1) / 2))));
      State g;
      g.insert("a", {Param, at::full({5}, static_cast<float>(r)), {}});
      g.insert("b", {Param, at::full({2, 2}, static_cast<double>(2 * r)), {}});
      distributed::all_reduce_mean(g, *pg, /*bucket_bytes=*/8);
      FAIL_IF(11, !at::allclose(g.at("a").value, at::full({5}, (n - 1) / 2.0f)));
      FAIL_IF(12, !at::allclose(g.at("b").value, at::full({2, 2}, static_cast<double>(n - 1))));
      ModuleDict m;
      m.register_variable("w", Param(at::full({4}, static_cast<float>(r))));
      m.register_variable("k", RngKey(at::scalar_tensor(static_cast<int64_t>(100 + r))));
      distributed::broadcast_state(m, *pg);
      FAIL_IF(13, !at::equal(m.variable("w").value(), at::zeros({4})) || m.variable("k").value().item<int64_t>() != 100);
      // Reduce-scatter: rank k's input is (k + 1) x [0, 1, ..., 2n - 1]; each rank gets its 2 of the sum.
      at::Tensor in = at::arange(2 * n, at::kFloat) * (r + 1), out = at::empty({2});
      pg->reduce_scatter_sum(out, in);
      FAIL_IF(14, !at::equal(out, at::arange(2 * r, 2 * r + 2, at::kFloat) * (n * (n + 1) / 2)));
      // Uneven rows: a [5, 2] tensor at n ranks, rank k's rows of the mean of (k + 1) x t.
      const at::Tensor t = at::arange(10, at::kFloat).reshape({5, 2});
      const std::vector<at::Tensor> rows = distributed::reduce_scatter_mean({t * (r + 1)}, *pg);
      const ShardRange mine = shard_range(5, r, n);
      FAIL_IF(15, !at::allclose(rows[0], t.narrow(0, mine.start, mine.size) * ((n + 1) / 2.0)));
      std::cout << "collectives ok on rank " << r << "\n";
      return 0;
    }
    if (mode == "zero1") return zero1(*pg, dir);
    if (mode == "fsdp") {
      checkpoint::Checkpointer c;  // one for the run: its saves are numbered for the group
      c.process_group = pg->new_group("ckpt");
      for (const char* type : {"MLP", "CNN", "GPT"})
        if (int rc = fsdp(pg, c, type, dir)) return rc;
      return 0;
    }
    if (mode == "reducer") return reducer_check(pg);
    if (mode == "die-in-gather") return die_in_gather(pg);
    if (mode == "replicas") {
      if (const int rc = step_transfers(*pg, std::filesystem::path(dir) / "transfers")) return rc;
      if (const int rc = peer_replicas(*pg, std::filesystem::path(dir) / "peers")) return rc;
      return replica_agreement(*pg, std::filesystem::path(dir) / "agreement");
    }
    if (mode == "fuzz-seeds") {
      const auto spec = PartitionSpec::sharded(0, 2);
      State s;
      s.insert("dense/kernel", {Param, at::arange(12, at::kFloat).view({3, 4}), {}});
      s.insert("dense/bias", {Param, at::arange(4, at::kFloat).to(at::kBFloat16), {}});
      s.insert("mu", {OptState, shard_of(at::arange(10, at::kFloat).view({5, 2}), spec, Mesh{r, n}).clone(), {{kShardingKey, spec.to_string()}}});
      s.insert("step", {OptState, at::scalar_tensor(int64_t(3)), {}});
      checkpoint::Checkpointer c;
      c.process_group = pg;
      c.save(dir + "/seed", checkpoint::Composite{{"state", checkpoint::StandardSave(s)}, {"data", checkpoint::JsonSave({{"index", 7}})}});
      return 0;
    }
    if (mode == "fixture") {
      checkpoint::Checkpointer c;
      c.process_group = pg;
      c.save(dir + "/fixture", checkpoint::Composite{{"state", checkpoint::StandardSave(test::fixture_state(r, n))},
                                                     {"extra", checkpoint::JsonSave(test::fixture_json())}},
             {{"step", 7}, {"metrics", {{"loss", 0.5}}}});
      std::cout << "fixture saved on rank " << r << std::endl;
      return 0;
    }
    if (mode == "preemption") return preemption(pg, dir);
    if (mode == "corrupt-restore" || mode == "disagree") return sharded_modes(*pg, mode, dir);
    if (mode == "different-steps") {  // rank 0 saves step 2 while rank 1 saves step 1
      checkpoint::Checkpointer c;
      c.process_group = pg;
      State one;
      one.insert("w", {Param, at::arange(5000, at::kFloat), {}});
      try {
        c.save(dir + "/" + std::to_string(r == 0 ? 2 : 1), checkpoint::Composite{{"params", checkpoint::StandardSave(one)}});
      } catch (const Error& e) {
        return report_and_wait(dir, r, n, "save failed on rank " + std::to_string(r) + ": " + e.what(), 20);
      }
      return report_and_wait(dir, r, n, "save succeeded on rank " + std::to_string(r), 0);
    }
    checkpoint::CheckpointManagerOptions o;
    o.enable_async_checkpointing = false;
    o.handle_preemption_signals = false;
    o.process_group = pg->new_group("ckpt");
    checkpoint::CheckpointManager mgr(dir, o);
    State s;
    for (int i = 0; i < 7; ++i) s.insert("w" + std::to_string(i), {Param, at::arange(1000 * (i + 1), at::kFloat), {}});
    s.insert("step", {OptState, at::scalar_tensor(int64_t(1)), {}});
    if (mode == "every-rank-fails") {  // the same bad input on every rank: a tensor without data
      s.at("w0").value = at::empty({1000}, at::TensorOptions().device(at::kMeta));
      s.at("w6").value = at::empty({7000}, at::TensorOptions().device(at::kMeta));
    }
    if (mode == "rank1-fails" && r == 1) {
      // Break a tensor that rank 1 writes (the assignment is deterministic).
      const auto plan = checkpoint::WritePlan::balance(
          {{"params", checkpoint::StateHandler().plan_writes("params", checkpoint::StandardSave(s))}}, n);
      std::string path;
      for (const auto& [p, vs] : s)
        if (path.empty() && plan.at("params", p).rank == 1) path = p;
      FAIL_IF(22, path.empty());
      auto& v = s.at(path).value;
      v = at::empty(v.sizes(), at::TensorOptions().device(at::kMeta));
    }
    if (mode == "partial-save" && r == 1) {
      std::this_thread::sleep_for(std::chrono::seconds(8));  // never joins the save
      return 0;
    }
    try {
      mgr.save(1, checkpoint::Composite{{"params", checkpoint::StandardSave(s)}}, {{"loss", 1.0}}, true);
    } catch (const Error& e) {
      if (mode == "rank1-fails") return report_and_wait(dir, r, n, "save failed on rank " + std::to_string(r) + ": " + e.what(), 20);
      if (mode == "every-rank-fails") {  // what a program's exit code would be (tools/cli.h)
        std::cout << "save failed on rank " << r << " with exit code " << e.exit_code() << std::endl;
        return 0;
      }
      std::cout << "save failed on rank " << r << ": " << e.what() << std::endl;
      return 20;
    }
    State t = s;
    auto back = mgr.restore(1, checkpoint::Composite{{"params", checkpoint::StandardRestore(t)}}).state("params");
    FAIL_IF(21, !back.equal(s));
    std::cout << "save ok on rank " << r << "\n";
    return 0;
  } catch (const std::exception& e) {
    std::cout << "error: " << e.what() << "\n";
    return 30;
  }
}
