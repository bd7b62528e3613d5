// Data-parallel process groups on PyTorch's c10d (Gloo for CPU tensors, NCCL for CUDA tensors
// where chosen), gradient averaging, state broadcast. c10d headers stay in distributed.cpp.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "nnx/framework/module.h"
#include "nnx/framework/state.h"

namespace nnx::distributed {

/// Where this process sits: torchrun's variables RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
/// MASTER_PORT, or mpirun's OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK.
struct Env {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
};

/// Reads Env from the environment; a process without these variables is rank 0 of 1.
/// Throws nnx::Error naming the variable when one is malformed or inconsistent
/// (RANK >= WORLD_SIZE, a port out of range).
Env env_from_environment();

/// The c10d backend that carries the collectives of CUDA tensors (torch.distributed's names).
/// CPU tensors always travel over Gloo: a group on kNccl is what torch.distributed calls
/// "cuda:nccl,cpu:gloo", so the checkpoint protocol's CPU-side decisions and host-memory
/// replicas keep working beside NCCL.
enum class Backend { kGloo, kNccl };

/// "gloo" or "nccl".
const char* backend_name(Backend backend);

/// Whether this build can make NCCL groups: a CUDA libtorch whose c10d has ProcessGroupNCCL,
/// compiled against nccl.h (CMake's NNX_WITH_NCCL). Says nothing about GPUs being present.
bool nccl_built();

/// The backend for the config value `name` ("auto" | "gloo" | "nccl") and the training device:
/// auto is NCCL for a CUDA device in a build with NCCL, Gloo otherwise. Throws nnx::Error for
/// another name, and for "nccl" with a device that is not CUDA or in a build without NCCL
/// (saying which).
Backend resolve_backend(const std::string& name, const c10::Device& device);

class ProcessGroup;

/// A collective in flight (ProcessGroup::all_reduce_sum_async, all_gather_async). Holds its
/// tensors until done.
class PendingWork {
 public:
  /// Waits for it, at most the group's timeout; throws nnx::IOError naming the rank when a rank
  /// failed or is missing, as the blocking collectives do. A second wait() returns at once.
  void wait();

 private:
  friend class ProcessGroup;
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

/// A c10d process group plus its TCPStore: Gloo, and on Backend::kNccl also ProcessGroupNCCL,
/// each collective going to the backend of its tensors' device (CUDA tensors to NCCL, CPU
/// tensors to Gloo). GLOO_SOCKET_IFNAME selects Gloo's network interface (as in
/// torch.distributed); without it a loopback MASTER_ADDR uses 127.0.0.1. NCCL reads its own
/// NCCL_* variables.
/// Timeouts: a Gloo collective waits at most `timeout` and a rank missing from it makes the
/// others throw nnx::IOError within it. A rank whose collective failed waits at most 3 s more
/// to see which ranks fail with it, and its error names those that did not (a rank that died,
/// was lost, or hangs outside the collective). An NCCL collective is ordered on the CUDA stream and
/// does not block the CPU; NCCL's watchdog (c10d's) aborts one that runs past `timeout`, ending
/// the process with c10d's error, which names the rank and the collective.
class ProcessGroup {
 public:
  /// Rendezvous through a TCPStore at MASTER_ADDR:MASTER_PORT (rank 0 serves it); every rank
  /// waits at most `timeout` for the others. NCCL's communicators are made at the first
  /// collective of CUDA tensors. Throws nnx::IOError (exit code 1) when the rendezvous fails or
  /// times out, naming the rank; nnx::Error for kNccl in a build without NCCL or without a GPU.
  static std::shared_ptr<ProcessGroup> create(const Env& env, std::chrono::milliseconds timeout,
                                              Backend backend = Backend::kGloo);
  /// Another group over the same ranks and store (keys prefixed by `name`), on Gloo only: for
  /// CPU-side coordination (the checkpointer's background thread, replicas of host memory).
  /// Collectives on it never interleave with this group's.
  std::shared_ptr<ProcessGroup> new_group(const std::string& name) const;
  ~ProcessGroup();

  int rank() const;
  int world_size() const;
  std::chrono::milliseconds timeout() const;
  /// The backend of CUDA tensors' collectives (kGloo for groups from new_group()).
  Backend backend() const;

  /// Element-wise sum over ranks, in place (c10d allreduce).
  void all_reduce_sum(std::vector<at::Tensor>& tensors);
  /// all_reduce_sum of one tensor, started and not waited for: c10d runs it on its own threads
  /// while the caller goes on (a gradient bucket's while backward computes the next ones).
  PendingWork all_reduce_sum_async(const at::Tensor& tensor);
  /// Element-wise max over ranks, in place.
  void all_reduce_max(std::vector<at::Tensor>& tensors);
  /// `root`'s tensors into every rank's tensors (same shapes), in place.
  void broadcast(std::vector<at::Tensor>& tensors, int root = 0);
  /// c10d allgather: `outputs` (world_size tensors shaped like `input`) receive every rank's
  /// `input`, in rank order. bfloat16 travels as float16 bits (Gloo has no bfloat16).
  void all_gather(std::vector<at::Tensor>& outputs, const at::Tensor& input);
  /// all_gather, started and not waited for: `outputs` hold every rank's `input` once wait()
  /// returns (ZeRO-3's prefetch of the next unit's params).
  PendingWork all_gather_async(const std::vector<at::Tensor>& outputs, const at::Tensor& input);
  /// c10d reduce-scatter: `input` (contiguous, world_size x output.numel() elements) is summed
  /// over ranks and this rank's chunk of the sum (elements [rank x n, (rank+1) x n) for
  /// n = output.numel()) lands in `output`. Where the backend has no reduce-scatter (libtorch
  /// 1.13's Gloo), an all-reduce of `input` in place and a copy of the chunk: the same sums,
  /// twice the traffic, so `input` holds no promised values afterwards. Float dtypes Gloo can
  /// sum (not bfloat16).
  void reduce_scatter_sum(at::Tensor& output, at::Tensor& input);
  /// Waits until every rank arrives (over Gloo, on the CPU).
  void barrier();
  /// c10d send of `tensor`'s bytes (CPU, contiguous; any dtype) to rank `dst`, matched by the
  /// recv() of `dst` with the same `tag`; messages between two ranks on one tag arrive in order.
  /// Waits until delivered, at most timeout(); throws nnx::IOError naming the peer.
  void send(const at::Tensor& tensor, int dst, int tag);
  /// c10d recv into `tensor` (CPU, contiguous, as many bytes as the matching send) from rank
  /// `src`. Waits at most timeout(); throws nnx::IOError naming the peer (also when it died).
  void recv(at::Tensor& tensor, int src, int tag);
  /// Key-value store shared by the ranks (c10d::Store). get() waits up to timeout() for the key.
  void store_set(const std::string& key, const std::string& value);
  std::string store_get(const std::string& key);
  /// Whether `key` is set (does not wait).
  bool store_check(const std::string& key);
  /// Removes `key` (no error when it is not set).
  void store_delete(const std::string& key);

 private:
  struct Impl;
  friend class PendingWork;
  explicit ProcessGroup(std::unique_ptr<Impl> impl);
  void all_reduce(std::vector<at::Tensor>& tensors, int op);  // op: c10d::ReduceOp::RedOpType
  // Runs f(); a failure becomes nnx::IOError naming `what` and this rank, and for a collective
  // the ranks that did not fail with it. Defined and used in distributed.cpp only.
  template <class F>
  void guarded(const char* what, F&& f, bool collective = true) const;
  std::unique_ptr<Impl> impl_;
};

/// Copies every variable of `module` from `root` to all ranks (the initial state of data
/// parallel training). Rng state included.
void broadcast_state(Module& module, ProcessGroup& pg, int root = 0);

/// Averages the gradient tensors of `grads` over ranks in place, in buckets of about
/// `bucket_bytes` (flatten, one all-reduce per bucket, scale by 1/world_size, copy back).
void all_reduce_mean(const State& grads, ProcessGroup& pg, int64_t bucket_bytes = 25 << 20);

}  // namespace nnx::distributed
