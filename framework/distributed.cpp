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

  C10dGroup& for_tensor(const at::Tensor& t) const { return nccl && t.is_cuda() ? *nccl : *pg; }
  void wait(const C10dGroup& group, c10d::Work& work) const;
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

template <class F>
void guarded(const char* what, const ProcessGroup& g, F&& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    NNX_CHECK_IO(false, what, " failed on rank ", g.rank(), " of ", g.world_size(), " (a rank missing or failed within ",
              g.timeout().count() / 1000.0, " s?): ", e.what_without_backtrace());
  } catch (const std::exception& e) {
    NNX_CHECK_IO(false, what, " failed on rank ", g.rank(), " of ", g.world_size(), ": ", e.what());
  }
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
  guarded("creating process group", *this, [&] {
    impl->pg = make_gloo(c10::make_intrusive<c10d::PrefixStore>("nnx/" + name, impl_->store), impl_->env, impl_->timeout);
  });
  return std::shared_ptr<ProcessGroup>(new ProcessGroup(std::move(impl)));
}

int ProcessGroup::rank() const { return impl_->env.rank; }
int ProcessGroup::world_size() const { return impl_->env.world_size; }
std::chrono::milliseconds ProcessGroup::timeout() const { return impl_->timeout; }
Backend ProcessGroup::backend() const { return impl_->nccl ? Backend::kNccl : Backend::kGloo; }

void ProcessGroup::all_reduce(std::vector<at::Tensor>& tensors, int op) {
  NNX_CHECK(!tensors.empty(), "all_reduce of no tensors");
  guarded("all_reduce", *this, [&] {
    c10d::AllreduceOptions o;
    o.reduceOp = static_cast<c10d::ReduceOp::RedOpType>(op);
    o.timeout = impl_->timeout;
    C10dGroup& group = impl_->for_tensor(tensors[0]);
    impl_->wait(group, *group.allreduce(tensors, o));
  });
}

void ProcessGroup::all_reduce_sum(std::vector<at::Tensor>& tensors) { all_reduce(tensors, c10d::ReduceOp::SUM); }

struct PendingAllReduce::Impl {
  c10::intrusive_ptr<c10d::Work> work;
  std::vector<at::Tensor> tensors;
  const ProcessGroup* group;
  bool on_nccl = false;
};

PendingAllReduce ProcessGroup::all_reduce_sum_async(const at::Tensor& tensor) {
  PendingAllReduce p;
  p.impl_ = std::make_shared<PendingAllReduce::Impl>();
  p.impl_->tensors = {tensor};
  p.impl_->group = this;
  guarded("all_reduce", *this, [&] {
    c10d::AllreduceOptions o;
    o.reduceOp = c10d::ReduceOp::SUM;
    o.timeout = impl_->timeout;
    C10dGroup& group = impl_->for_tensor(tensor);
    p.impl_->on_nccl = &group == impl_->nccl.get();
    p.impl_->work = group.allreduce(p.impl_->tensors, o);
  });
  return p;
}

void PendingAllReduce::wait() {
  if (!impl_ || !impl_->work) return;
  guarded("all_reduce", *impl_->group, [&] { wait_work(*impl_->work, impl_->on_nccl, impl_->group->timeout()); });
  impl_->work.reset();
}

void ProcessGroup::all_reduce_max(std::vector<at::Tensor>& tensors) { all_reduce(tensors, c10d::ReduceOp::MAX); }

void ProcessGroup::broadcast(std::vector<at::Tensor>& tensors, int root) {
  NNX_CHECK(!tensors.empty(), "broadcast of no tensors");
  guarded("broadcast", *this, [&] {
    c10d::BroadcastOptions o;
    o.rootRank = root;
    o.timeout = impl_->timeout;
    C10dGroup& group = impl_->for_tensor(tensors[0]);
    impl_->wait(group, *group.broadcast(tensors, o));
  });
}

void ProcessGroup::all_gather(std::vector<at::Tensor>& outputs, const at::Tensor& input) {
  NNX_CHECK(static_cast<int>(outputs.size()) == world_size(), "all_gather: ", outputs.size(), " outputs for ",
            world_size(), " ranks");
  guarded("all_gather", *this, [&] {
    c10d::AllgatherOptions o;
    o.timeout = impl_->timeout;
    std::vector<std::vector<at::Tensor>> out = {outputs};
    std::vector<at::Tensor> in = {input};
    C10dGroup& group = impl_->for_tensor(input);
    impl_->wait(group, *group.allgather(out, in, o));
  });
}

void ProcessGroup::barrier() {
  guarded("barrier", *this, [&] {
    c10d::BarrierOptions o;
    o.timeout = impl_->timeout;
    impl_->pg->barrier(o)->wait(impl_->timeout);
  });
}

void ProcessGroup::send(const at::Tensor& tensor, int dst, int tag) {
  NNX_CHECK(tensor.device().is_cpu() && tensor.is_contiguous(), "send: a contiguous CPU tensor is required");
  guarded(("send to rank " + std::to_string(dst)).c_str(), *this, [&] {
    std::vector<at::Tensor> t = {tensor};
    NNX_CHECK_IO(impl_->pg->send(t, dst, tag)->wait(impl_->timeout), "send to rank ", dst, " timed out");
  });
}

void ProcessGroup::recv(at::Tensor& tensor, int src, int tag) {
  NNX_CHECK(tensor.device().is_cpu() && tensor.is_contiguous(), "recv: a contiguous CPU tensor is required");
  guarded(("recv from rank " + std::to_string(src)).c_str(), *this, [&] {
    std::vector<at::Tensor> t = {tensor};
    NNX_CHECK_IO(impl_->pg->recv(t, src, tag)->wait(impl_->timeout), "recv from rank ", src, " timed out");
  });
}

bool ProcessGroup::store_check(const std::string& key) {
  bool set = false;
  guarded("store check", *this, [&] { set = impl_->store->check({key}); });
  return set;
}

void ProcessGroup::store_delete(const std::string& key) {
  guarded("store delete", *this, [&] { impl_->store->deleteKey(key); });
}

void ProcessGroup::store_set(const std::string& key, const std::string& value) {
  guarded("store set", *this, [&] { impl_->store->set(key, std::vector<uint8_t>(value.begin(), value.end())); });
}

std::string ProcessGroup::store_get(const std::string& key) {
  std::string out;
  guarded("store get", *this, [&] {
    impl_->store->wait({key}, impl_->timeout);
    auto v = impl_->store->get(key);
    out.assign(v.begin(), v.end());
  });
  return out;
}

namespace {
// Gloo has no bfloat16 (nor int16): collectives that only move bits (broadcast, allgather) send
// bf16 as float16, whose 2-byte elements Gloo copies without arithmetic.
at::Tensor wire(const at::Tensor& t) { return t.scalar_type() == at::kBFloat16 ? t.view(at::kHalf) : t; }
}  // namespace

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

void all_gather_shards(const std::vector<at::Tensor>& tensors, ProcessGroup& pg) {
  const int n = pg.world_size(), me = pg.rank();
  if (n == 1) return;
  c10::NoGradGuard ng;
  std::map<at::ScalarType, std::vector<at::Tensor>> by_dtype;
  for (const auto& t : tensors) {
    NNX_CHECK(t.dim() >= 1, "all_gather_shards: a 0-d tensor is replicated, not sharded");
    by_dtype[t.scalar_type()].push_back(t);
  }
  prepare_write(tensors);  // the gathered rows are written into the tensors (params) in place
  for (auto& [dtype, ts] : by_dtype) {
    // Elements of rank k's rows in tensor i, and each rank's packed size.
    auto rows = [&](const at::Tensor& t, int k) { return shard_range(t.size(0), k, n); };
    auto row_numel = [](const at::Tensor& t) { return t.size(0) == 0 ? int64_t(0) : t.numel() / t.size(0); };
    int64_t largest = 0;
    for (int k = 0; k < n; ++k) {
      int64_t total = 0;
      for (const auto& t : ts) total += rows(t, k).size * row_numel(t);
      largest = std::max(largest, total);
    }
    if (largest == 0) continue;
    auto opts = ts[0].options();
    at::Tensor mine = at::zeros({largest}, opts);
    int64_t off = 0;
    for (const auto& t : ts) {
      auto r = rows(t, me);
      const int64_t m = r.size * row_numel(t);
      if (m) mine.narrow(0, off, m).view(t.narrow(0, r.start, r.size).sizes()).copy_(t.narrow(0, r.start, r.size));
      off += m;
    }
    std::vector<at::Tensor> all, all_wire;
    for (int k = 0; k < n; ++k) {
      all.push_back(at::empty({largest}, opts));
      all_wire.push_back(wire(all.back()));
    }
    pg.all_gather(all_wire, wire(mine));
    for (int k = 0; k < n; ++k) {
      if (k == me) continue;
      off = 0;
      for (const auto& t : ts) {
        auto r = rows(t, k);
        const int64_t m = r.size * row_numel(t);
        if (m) {
          at::Tensor dst = t.narrow(0, r.start, r.size);
          dst.copy_(all[static_cast<size_t>(k)].narrow(0, off, m).view(dst.sizes()));
        }
        off += m;
      }
    }
  }
}

}  // namespace nnx::distributed
