#include "nnx/framework/distributed.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#if NNX_WITH_NCCL
#ifndef USE_C10D_NCCL
#error "NNX_WITH_NCCL needs a libtorch built with NCCL (its torch_cuda target defines USE_C10D_NCCL)"
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <map>
#include <thread>

#include "nnx/framework/compat.h"
#include "nnx/framework/error.h"
#include "nnx/framework/sharding.h"
#include "nnx/framework/graph.h"
#include "nnx/framework/log.h"
#include "nnx/framework/write_fence.h"

namespace nnx::distributed {

namespace {
int env_int(const char* name, int fallback, bool* found = nullptr) {
  const char* v = std::getenv(name);
  if (found) *found = v != nullptr;
  if (!v) return fallback;
  char* end = nullptr;
  long x = std::strtol(v, &end, 10);
  NNX_CHECK(end && *end == '\0' && end != v, "environment variable ", name, "='", v, "' is not an integer");
  return static_cast<int>(x);
}
}  // namespace

Env env_from_environment() {
  Env e;
  bool have_rank = false, have_ompi = false;
  e.rank = env_int("RANK", 0, &have_rank);
  e.world_size = env_int("WORLD_SIZE", 1);
  e.local_rank = env_int("LOCAL_RANK", e.rank);
  if (!have_rank) {
    e.rank = env_int("OMPI_COMM_WORLD_RANK", 0, &have_ompi);
    if (have_ompi) {
      e.world_size = env_int("OMPI_COMM_WORLD_SIZE", 1);
      e.local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK", e.rank);
    }
  }
  if (const char* a = std::getenv("MASTER_ADDR")) e.master_addr = a;
  e.master_port = env_int("MASTER_PORT", 29500);
  NNX_CHECK(e.world_size >= 1, "WORLD_SIZE must be >= 1, got ", e.world_size);
  NNX_CHECK(e.rank >= 0 && e.rank < e.world_size, "RANK ", e.rank, " is outside [0, WORLD_SIZE=", e.world_size, ")");
  NNX_CHECK(e.master_port >= 0 && e.master_port < 65536, "MASTER_PORT ", e.master_port, " is not a port");
  return e;
}

// What c10d's backends derive from: c10d::Backend since libtorch 2.0, ProcessGroup before.
#if NNX_TORCH_VERSION_AT_LEAST(2, 0)
using C10dGroup = c10d::Backend;
#else
using C10dGroup = c10d::ProcessGroup;
#endif

const char* backend_name(Backend backend) { return backend == Backend::kNccl ? "nccl" : "gloo"; }

bool nccl_built() {
#if NNX_WITH_NCCL
  return true;
#else
  return false;
#endif
}

Backend resolve_backend(const std::string& name, const c10::Device& device) {
  NNX_CHECK(name == "auto" || name == "gloo" || name == "nccl", "distributed.backend = '", name,
            "' is not auto, gloo or nccl");
  if (name == "gloo") return Backend::kGloo;
  if (name == "auto") return device.is_cuda() && nccl_built() ? Backend::kNccl : Backend::kGloo;
  NNX_CHECK(nccl_built(), "distributed.backend = nccl: this build has no NCCL (it needs a CUDA libtorch "
            "and nccl.h at configure time; see docs/gpu.md); use gloo or auto");
  NNX_CHECK(device.is_cuda(), "distributed.backend = nccl needs a CUDA device; the device is ", device.str(),
            " (NCCL moves GPU memory only; use gloo or auto)");
  return Backend::kNccl;
}

struct ProcessGroup::Impl {
  Env env;
  std::chrono::milliseconds timeout;
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<C10dGroup> pg;    // Gloo: CPU tensors, and CUDA tensors without NCCL
  c10::intrusive_ptr<C10dGroup> nccl;  // CUDA tensors on Backend::kNccl, else null
  bool no_reduce_scatter = false;      // Gloo said it has none: all-reduce instead (NCCL has one)

  std::string name;                    // "" for a group from create(), new_group()'s name
  C10dGroup& for_tensor(const at::Tensor& t) const { return nccl && t.is_cuda() ? *nccl : *pg; }
  void wait(const C10dGroup& group, c10d::Work& work) const;
  std::string absent_ranks() const;
  mutable int failures = 0;  // absent_ranks() calls: each failure posts under keys of its own
};

namespace {
// Gloo's work is waited for on the CPU, at most the timeout. NCCL's orders the current CUDA
// stream after it and the CPU goes on (as torch.distributed's wait()); NCCL's watchdog ends a
// collective that runs past the group's timeout.
void wait_work(c10d::Work& work, bool on_nccl, std::chrono::milliseconds timeout) {
  if (on_nccl) work.wait();
  else work.wait(timeout);
}
}  // namespace

void ProcessGroup::Impl::wait(const C10dGroup& group, c10d::Work& work) const {
  wait_work(work, &group == nccl.get(), timeout);
}

// After a collective failed on this rank: the ranks that did not fail with it within a grace of
// at most 3 s (dead, lost, or hung outside the collective), as ", rank 1 did not ...", or "" when
// every rank failed. Every failing rank posts its failure to the store; rank 0, which serves the
// store, stays until the others that posted have read (a rank that finds no store names rank 0).
std::string ProcessGroup::Impl::absent_ranks() const {
  const int n = env.world_size, me = env.rank;
  if (n == 1 || !store) return "";
  using Clock = std::chrono::steady_clock;
  const std::string base = "nnx/failure/" + name + "/" + std::to_string(failures++) + "/";
  const auto grace = std::min(timeout, std::chrono::milliseconds(3000));
  const auto deadline = Clock::now() + grace;
  auto posted = [&](const std::string& what, int k) { return store->check({base + what + std::to_string(k)}); };
  try {
    store->set(base + "failed/" + std::to_string(me), std::vector<uint8_t>{1});
    std::vector<int> absent;
    do {
      absent.clear();
      for (int k = 0; k < n; ++k)
        if (k != me && !posted("failed/", k)) absent.push_back(k);
      if (absent.empty()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    } while (Clock::now() < deadline);
    store->set(base + "read/" + std::to_string(me), std::vector<uint8_t>{1});
    // Rank 0 serves the store: it stays until every rank has read (a rank that fails later than
    // this one still finds the store), at most two graces more.
    for (int k = 1; me == 0 && k < n; ++k)
      while (!posted("read/", k) && Clock::now() < deadline + 2 * grace)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (absent.empty()) return "";
    std::string list;
    for (int k : absent) list += (list.empty() ? "" : ", ") + std::to_string(k);
    return std::string("; rank") + (absent.size() > 1 ? "s " : " ") + list + " did not fail with it within " +
           std::to_string(grace.count() / 1000.0).substr(0, 3) + " s: exited, lost, or blocked elsewhere";
  } catch (const std::exception&) {
    return me == 0 ? "" : "; rank 0 (which serves the store) is unreachable: exited or lost";
  }
}

template <class F>
void ProcessGroup::guarded(const char* what, F&& f, bool collective) const {
  try {
    f();
  } catch (const c10::Error& e) {
    const std::string absent = collective ? impl_->absent_ranks() : "";
    NNX_CHECK_IO(false, what, " failed on rank ", rank(), " of ", world_size(), absent.empty() ? " (a rank missing or failed within " : "",
                 absent.empty() ? std::to_string(timeout().count() / 1000.0) + " s?)" : absent, ": ", e.what_without_backtrace());
  } catch (const Error& e) {  // a check of ours: an IOError is a timeout, another error is no peer's
    const std::string absent = collective && e.exit_code() == 1 ? impl_->absent_ranks() : "";
    NNX_CHECK_IO(false, what, " failed on rank ", rank(), " of ", world_size(), absent, ": ", e.what());
  } catch (const std::exception& e) {  // Gloo's own (libtorch 1.13 rethrows gloo::IoException)
    const std::string absent = collective ? impl_->absent_ranks() : "";
    NNX_CHECK_IO(false, what, " failed on rank ", rank(), " of ", world_size(), absent, ": ", e.what());
  }
}

ProcessGroup::ProcessGroup(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ProcessGroup::~ProcessGroup() = default;

namespace {
c10::intrusive_ptr<c10d::ProcessGroupGloo> make_gloo(const c10::intrusive_ptr<c10d::Store>& store, const Env& env,
                                                     std::chrono::milliseconds timeout) {
  auto opts = c10d::ProcessGroupGloo::Options::create();
  opts->timeout = timeout;
  // As torch.distributed: GLOO_SOCKET_IFNAME picks the interface; loopback for a local
  // master; otherwise the address the hostname resolves to.
  const bool loopback = env.master_addr == "127.0.0.1" || env.master_addr == "localhost";
  if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME")) {
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
  } else {
    opts->devices.push_back(loopback ? c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1")
                                     : c10d::ProcessGroupGloo::createDefaultDevice());
  }
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, env.rank, env.world_size, opts);
}

c10::intrusive_ptr<C10dGroup> make_nccl(const c10::intrusive_ptr<c10d::Store>& store, const Env& env,
                                        std::chrono::milliseconds timeout) {
#if NNX_WITH_NCCL
  // Checked here: ProcessGroupNCCL's own error for a machine without GPUs names no rank.
  NNX_CHECK(compat::cuda_device_count() > 0, "rank ", env.rank, ": distributed.backend = nccl, but no GPU is visible");
  auto opts = c10d::ProcessGroupNCCL::Options::create();
  opts->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, env.rank, env.world_size, opts);
#else
  NNX_CHECK(false, "rank ", env.rank, ": this build has no NCCL (distributed.backend = nccl)");
  return {};
#endif
}

}  // namespace

namespace {
// One non-blocking TCP connect to `ai`, waiting at most `wait`; true when it connected.
bool connects(const addrinfo& ai, std::chrono::milliseconds wait) {
  const int fd = ::socket(ai.ai_family, ai.ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai.ai_protocol);
  if (fd < 0) return false;
  bool ok = ::connect(fd, ai.ai_addr, ai.ai_addrlen) == 0;
  if (!ok && errno == EINPROGRESS) {
    pollfd p{fd, POLLOUT, 0};
    int err = 0;
    socklen_t len = sizeof err;
    ok = ::poll(&p, 1, static_cast<int>(wait.count())) == 1 && ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 &&
         err == 0;
  }
  ::close(fd);
  return ok;
}

// Waits until rank 0's store accepts connections, at most `timeout`. c10d's client (libtorch 2.x)
// would wait one timeout in its socket connect, then retry after a backoff of seconds, so a
// rank 0 that never came failed the others after about 2.5 timeouts.
bool store_answers(const Env& env, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  while (true) {
    addrinfo* found = nullptr;
    if (::getaddrinfo(env.master_addr.c_str(), std::to_string(env.master_port).c_str(), &hints, &found) == 0) {
      bool ok = false;
      for (addrinfo* a = found; a && !ok; a = a->ai_next) ok = connects(*a, std::chrono::milliseconds(1000));
      ::freeaddrinfo(found);
      if (ok) return true;
    }
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}
}  // namespace

std::shared_ptr<ProcessGroup> ProcessGroup::create(const Env& env, std::chrono::milliseconds timeout, Backend backend) {
  if (backend == Backend::kNccl) NNX_CHECK(nccl_built(), "rank ", env.rank, ": this build has no NCCL (distributed.backend = nccl)");
  auto impl = std::make_unique<Impl>();
  impl->env = env;
  impl->timeout = timeout;
  NNX_CHECK_IO(env.rank == 0 || store_answers(env, timeout), "rendezvous of rank ", env.rank, " of ", env.world_size,
               " at ", env.master_addr, ":", env.master_port, " failed within ", timeout.count() / 1000.0,
               " s: rank 0's store never answered (rank 0 missing or unreachable?)");
  try {
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(env.master_port);
    so.isServer = env.rank == 0;
    so.numWorkers = env.world_size;
    // Not waitWorkers: libtorch 1.13's server gives up waiting for workers silently after the
    // timeout, and the group's rendezvous below then waits a second timeout (a rank that never
    // arrived failed the others after twice timeout_seconds). Gloo's full-mesh connect waits
    // for every rank once, within the timeout.
    so.waitWorkers = false;
    so.timeout = timeout;
    impl->store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
    impl->pg = make_gloo(c10::make_intrusive<c10d::PrefixStore>("nnx/default", impl->store), env, timeout);
    if (backend == Backend::kNccl)
      impl->nccl = make_nccl(c10::make_intrusive<c10d::PrefixStore>("nnx/default-nccl", impl->store), env, timeout);
  } catch (const nnx::Error&) {
    throw;
  } catch (const std::exception& e) {
    // Operational (a rank missing or unreachable, a port taken): nnx::IOError, exit code 1.
    const auto* c10 = dynamic_cast<const c10::Error*>(&e);
    NNX_CHECK_IO(false, "rendezvous of rank ", env.rank, " of ", env.world_size, " at ", env.master_addr, ":",
                 env.master_port, " failed within ", timeout.count() / 1000.0, " s (a rank missing or unreachable?): ",
                 c10 ? c10->what_without_backtrace() : e.what());
  }
  return std::shared_ptr<ProcessGroup>(new ProcessGroup(std::move(impl)));
}

std::shared_ptr<ProcessGroup> ProcessGroup::new_group(const std::string& name) const {
  auto impl = std::make_unique<Impl>(*impl_);
  impl->nccl.reset();
  impl->name = name;
  guarded("creating process group", [&] {
    impl->pg = make_gloo(c10::make_intrusive<c10d::PrefixStore>("nnx/" + name, impl_->store), impl_->env, impl_->timeout);
  }, false);
  return std::shared_ptr<ProcessGroup>(new ProcessGroup(std::move(impl)));
}

int ProcessGroup::rank() const { return impl_->env.rank; }
int ProcessGroup::world_size() const { return impl_->env.world_size; }
std::chrono::milliseconds ProcessGroup::timeout() const { return impl_->timeout; }
Backend ProcessGroup::backend() const { return impl_->nccl ? Backend::kNccl : Backend::kGloo; }

void ProcessGroup::all_reduce(std::vector<at::Tensor>& tensors, int op) {
  NNX_CHECK(!tensors.empty(), "all_reduce of no tensors");
  guarded("all_reduce", [&] {
    c10d::AllreduceOptions o;
    o.reduceOp = static_cast<c10d::ReduceOp::RedOpType>(op);
    o.timeout = impl_->timeout;
    C10dGroup& group = impl_->for_tensor(tensors[0]);
    impl_->wait(group, *group.allreduce(tensors, o));
  });
}

void ProcessGroup::all_reduce_sum(std::vector<at::Tensor>& tensors) { all_reduce(tensors, c10d::ReduceOp::SUM); }

struct PendingWork::Impl {
  c10::intrusive_ptr<c10d::Work> work;
  std::vector<at::Tensor> inputs;
  std::vector<std::vector<at::Tensor>> outputs;
  const ProcessGroup* group;
  const char* what;
  bool on_nccl = false;
};

namespace {
// Gloo has no bfloat16 (nor int16): collectives that only move bits (broadcast, allgather) send
// bf16 as float16, whose 2-byte elements Gloo copies without arithmetic.
at::Tensor wire(const at::Tensor& t) { return t.scalar_type() == at::kBFloat16 ? t.view(at::kHalf) : t; }
}  // namespace

PendingWork ProcessGroup::all_reduce_sum_async(const at::Tensor& tensor) {
  PendingWork p;
  p.impl_ = std::make_shared<PendingWork::Impl>();
  p.impl_->inputs = {tensor};
  p.impl_->group = this;
  p.impl_->what = "all_reduce";
  guarded("all_reduce", [&] {
    c10d::AllreduceOptions o;
    o.reduceOp = c10d::ReduceOp::SUM;
    o.timeout = impl_->timeout;
    C10dGroup& group = impl_->for_tensor(tensor);
    p.impl_->on_nccl = &group == impl_->nccl.get();
    p.impl_->work = group.allreduce(p.impl_->inputs, o);
  });
  return p;
}

PendingWork ProcessGroup::all_gather_async(const std::vector<at::Tensor>& outputs, const at::Tensor& input) {
  NNX_CHECK(static_cast<int>(outputs.size()) == world_size(), "all_gather: ", outputs.size(), " outputs for ",
            world_size(), " ranks");
  PendingWork p;
  p.impl_ = std::make_shared<PendingWork::Impl>();
  p.impl_->inputs = {wire(input)};
  p.impl_->outputs.emplace_back();
  for (const auto& o : outputs) p.impl_->outputs[0].push_back(wire(o));
  p.impl_->group = this;
  p.impl_->what = "all_gather";
  guarded("all_gather", [&] {
    c10d::AllgatherOptions o;
    o.timeout = impl_->timeout;
    C10dGroup& group = impl_->for_tensor(input);
    p.impl_->on_nccl = &group == impl_->nccl.get();
    p.impl_->work = group.allgather(p.impl_->outputs, p.impl_->inputs, o);
  });
  return p;
}

void PendingWork::wait() {
  if (!impl_ || !impl_->work) return;
  impl_->group->guarded(impl_->what, [&] { wait_work(*impl_->work, impl_->on_nccl, impl_->group->timeout()); });
  impl_->work.reset();
}

void ProcessGroup::all_reduce_max(std::vector<at::Tensor>& tensors) { all_reduce(tensors, c10d::ReduceOp::MAX); }

void ProcessGroup::broadcast(std::vector<at::Tensor>& tensors, int root) {
  NNX_CHECK(!tensors.empty(), "broadcast of no tensors");
  guarded("broadcast", [&] {
    c10d::BroadcastOptions o;
    o.rootRank = root;
    o.timeout = impl_->timeout;
    C10dGroup& group = impl_->for_tensor(tensors[0]);
    impl_->wait(group, *group.broadcast(tensors, o));
  });
}

void ProcessGroup::all_gather(std::vector<at::Tensor>& outputs, const at::Tensor& input) {
  all_gather_async(outputs, input).wait();
}

void ProcessGroup::reduce_scatter_sum(at::Tensor& output, at::Tensor& input) {
  const int64_t n = output.numel();
  NNX_CHECK(input.numel() == n * world_size() && input.is_contiguous() && output.is_contiguous() &&
                input.scalar_type() == output.scalar_type(),
            "reduce_scatter_sum: input of ", input.numel(), " elements for an output of ", n, " on ", world_size(),
            " ranks (contiguous, one dtype)");
  guarded("reduce_scatter", [&] {
    C10dGroup& group = impl_->for_tensor(input);
#if NNX_TORCH_VERSION_AT_LEAST(2, 0)
    // c10d's reduce_scatter_tensor; a backend without it throws before any traffic, on every rank.
    const bool on_nccl = &group == impl_->nccl.get();
    if (on_nccl || !impl_->no_reduce_scatter) {
      c10d::ReduceScatterOptions o;
      o.reduceOp = c10d::ReduceOp::SUM;
      o.timeout = impl_->timeout;
      c10::intrusive_ptr<c10d::Work> work;
      try {
        work = group._reduce_scatter_base(output, input, o);
      } catch (const c10::Error& e) {
        if (std::string(e.what()).find("does not support") == std::string::npos) throw;
        impl_->no_reduce_scatter = true;
        log::debug("reduce_scatter: this backend has none; an all-reduce instead");
      }
      if (work) return impl_->wait(group, *work);
    }
#endif
    if (!impl_->no_reduce_scatter) log::debug("reduce_scatter: libtorch 1.13's c10d has none for Gloo; an all-reduce instead");
    impl_->no_reduce_scatter = true;
    c10d::AllreduceOptions o;
    o.reduceOp = c10d::ReduceOp::SUM;
    o.timeout = impl_->timeout;
    std::vector<at::Tensor> all = {input};
    impl_->wait(group, *group.allreduce(all, o));
    output.copy_(all[0].narrow(0, static_cast<int64_t>(rank()) * n, n).view(output.sizes()));
  });
}

void ProcessGroup::barrier() {
  guarded("barrier", [&] {
    c10d::BarrierOptions o;
    o.timeout = impl_->timeout;
    impl_->pg->barrier(o)->wait(impl_->timeout);
  });
}

void ProcessGroup::send(const at::Tensor& tensor, int dst, int tag) {
  NNX_CHECK(tensor.device().is_cpu() && tensor.is_contiguous(), "send: a contiguous CPU tensor is required");
  guarded(("send to rank " + std::to_string(dst)).c_str(), [&] {
    std::vector<at::Tensor> t = {tensor};
    NNX_CHECK_IO(impl_->pg->send(t, dst, tag)->wait(impl_->timeout), "send to rank ", dst, " timed out");
  }, /*collective=*/false);  // the error names the peer; the other ranks are not part of it
}

void ProcessGroup::recv(at::Tensor& tensor, int src, int tag) {
  NNX_CHECK(tensor.device().is_cpu() && tensor.is_contiguous(), "recv: a contiguous CPU tensor is required");
  guarded(("recv from rank " + std::to_string(src)).c_str(), [&] {
    std::vector<at::Tensor> t = {tensor};
    NNX_CHECK_IO(impl_->pg->recv(t, src, tag)->wait(impl_->timeout), "recv from rank ", src, " timed out");
  }, /*collective=*/false);
}

bool ProcessGroup::store_check(const std::string& key) {
  bool set = false;
  guarded("store check", [&] { set = impl_->store->check({key}); }, false);
  return set;
}

void ProcessGroup::store_delete(const std::string& key) {
  guarded("store delete", [&] { impl_->store->deleteKey(key); }, false);
}

void ProcessGroup::store_set(const std::string& key, const std::string& value) {
  guarded("store set", [&] { impl_->store->set(key, std::vector<uint8_t>(value.begin(), value.end())); }, false);
}

std::string ProcessGroup::store_get(const std::string& key) {
  std::string out;
  guarded("store get", [&] {
    impl_->store->wait({key}, impl_->timeout);
    auto v = impl_->store->get(key);
    out.assign(v.begin(), v.end());
  }, false);
  return out;
}

void broadcast_state(Module& module, ProcessGroup& pg, int root) {
  if (pg.world_size() == 1) return;
  c10::NoGradGuard ng;
  // One flat buffer per dtype (a Gloo collective takes tensors of one dtype).
  std::map<at::ScalarType, std::vector<at::Tensor>> by_dtype;
  for (auto& [path, var] : module.named_variables()) by_dtype[var.value().scalar_type()].push_back(var.value().detach());
  for (auto& [dtype, ts] : by_dtype) {
    std::vector<at::Tensor> flat;
    for (auto& t : ts) flat.push_back(t.reshape({-1}));
    at::Tensor buf = at::cat(flat);
    std::vector<at::Tensor> one = {wire(buf)};
    pg.broadcast(one, root);
    int64_t off = 0;
    prepare_write(ts);  // the copies below write the module's state in place
    for (auto& t : ts) {
      t.copy_(buf.slice(0, off, off + t.numel()).view(t.sizes()));
      off += t.numel();
    }
  }
}

void all_reduce_mean(const State& grads, ProcessGroup& pg, int64_t bucket_bytes) {
  if (pg.world_size() == 1) return;
  c10::NoGradGuard ng;
  std::vector<at::Tensor> bucket;
  int64_t bytes = 0;
  const double scale = 1.0 / pg.world_size();
  auto flush = [&] {
    if (bucket.empty()) return;
    std::vector<at::Tensor> flat_views;
    for (auto& t : bucket) flat_views.push_back(t.reshape({-1}));
    // Gloo cannot sum bfloat16: bf16 gradients are summed in float32 and rounded once.
    const bool bf16 = bucket[0].scalar_type() == at::kBFloat16;
    std::vector<at::Tensor> one = {bf16 ? at::cat(flat_views).to(at::kFloat) : at::cat(flat_views)};
    pg.all_reduce_sum(one);
    one[0].mul_(scale);
    int64_t off = 0;
    prepare_write(bucket);  // in place: also used for state (BatchNorm statistics)
    for (auto& t : bucket) {
      t.copy_(one[0].slice(0, off, off + t.numel()).view(t.sizes()));
      off += t.numel();
    }
    bucket.clear();
    bytes = 0;
  };
  at::ScalarType dtype = at::kFloat;
  for (const auto& [path, vs] : grads) {
    const at::Tensor& g = vs.value;
    if (!bucket.empty() && g.scalar_type() != dtype) flush();
    dtype = g.scalar_type();
    bucket.push_back(g);
    bytes += g.numel() * g.element_size();
    if (bytes >= bucket_bytes) flush();
  }
  flush();
}

}  // namespace nnx::distributed
