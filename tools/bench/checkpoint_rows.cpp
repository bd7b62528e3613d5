// nnx-bench's checkpoint, restore_after_save and gpu rows (tools/bench/rows.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <CLI/CLI.hpp>
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/pooling.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/serialize.h>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <sstream>
#include <atomic>
#include <thread>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <map>
#include <random>
#include "nnx/checkpoint/async_checkpointer.h"
#include "nnx/checkpoint/shard_planner.h"
#include "nnx/checkpoint/io/device_copies.h"
#include "nnx/checkpoint/format/safetensors.h"
#include "nnx/checkpoint/io/fs.h"
#include "nnx/checkpoint/manager.h"
#include "nnx/framework/compat.h"
#include "nnx/framework/data/dataset.h"
#include "nnx/framework/distributed.h"
#include "nnx/checkpoint/emergency/peer_replicas.h"
#include "nnx/framework/graph.h"
#include "nnx/framework/host_memory.h"
#include "nnx/framework/gradient_reducer.h"
#include "nnx/models/models.h"
#include "nnx/trainer/trainer.h"
#include "nnx/optim/optimizer.h"

#include "bench_common.h"
#include "rows.h"
#include "nnx/checkpoint/format/directory.h"
#include "nnx/checkpoint/format/schema.h"

namespace nnx::bench {

using namespace nnx::checkpoint;

// ---- checkpoint rows: 400 MB fp32 in 100 tensors --------------------------------------------
// The 400 MB state (100 fp32 tensors of 4 MB) the checkpoint rows save and restore, each
// contender's save, and what the later rows compare with (filled by the earlier ones).
struct CheckpointBench {
  stdfs::path dir;
  int reps = 0;
  static constexpr int n = 100;
  static constexpr int64_t numel = 1000 * 1000;
  State s = make_state(n, numel);
  std::vector<at::Tensor> tensors;
  Checkpointer ck, ck_buffered;
  double t_ours = 0, t_ours_kept = 0;       // sync save, without and with retention (s)
  double restore_s = 0, restore_cold_s = 0;  // restore of "ours0", page-cached and cold (s)

  CheckpointBench(stdfs::path d, int r) : dir(std::move(d)), reps(r) {
    for (auto& [p, vs] : s) tensors.push_back(vs.value);
    ck_buffered.write_options.direct_io = false;
  }
  void save_ours(const stdfs::path& p) { ck.save(p, Composite{{"params", StandardSave(s)}}); }
  void save_buffered(const stdfs::path& p) { ck_buffered.save(p, Composite{{"params", StandardSave(s)}}); }
  void raw_write(const stdfs::path& p) { write_raw_fsync(p, tensors); }
  void save_torch(const stdfs::path& p) {
    torch::save(tensors, p.string());
    fsync_file(p.string());
  }
};


// The contenders run in alternating rounds (ours, raw, torch, then again) and each row
// reports the median of the per-round ratios, so drift of this machine's speed between
// blocks of repetitions does not enter a ratio.
void bench_save(CheckpointBench& b) {
  std::vector<double> ours_v, raw_v, torch_v, buffered_v;
  for (int i = 0; i < b.reps; ++i) {
    const std::string k = std::to_string(i);
    ours_v.push_back(time_once([&] { b.save_ours(b.dir / ("ours" + k)); }));
    raw_v.push_back(time_once([&] { b.raw_write(b.dir / ("raw" + k)); }));
    torch_v.push_back(time_once([&] { b.save_torch(b.dir / ("torch" + k + ".pt")); }));
    buffered_v.push_back(time_once([&] { b.save_buffered(b.dir / ("buffered" + k)); }));
  }
  b.t_ours = median(ours_v);
  add_rounds("save 400 MB fsync'd (100 fp32 tensors)", ours_v, raw_v, " s", "raw write+fsync", 1.10);
  add_rounds("save 400 MB vs torch::save (+fsync)", ours_v, torch_v, " s", "torch::save", 0.85);
  add_rounds("save 400 MB through the page cache (direct_io off)", buffered_v, raw_v, " s", "raw write+fsync", 0);
  std::string out = run_capture("/usr/bin/python3 " + std::string(NNX_SOURCE_DIR) + "/tools/bench/h5py_save.py " +
                                (b.dir / "h5py.h5").string() + " 100 1000000 2>/dev/null");
  if (!out.empty()) add("save 400 MB vs h5py (+fsync)", b.t_ours, std::stod(out), " s", "h5py", 0);
  else rows.push_back({"save 400 MB vs h5py", fmt(b.t_ours, " s"), "python3-h5py missing", "-", "reported", ""});
  const double mb = b.s.nbytes() / 1e6;
  std::cerr << "  save: ours " << mb / b.t_ours << " MB/s, raw " << mb / median(raw_v) << " MB/s\n";
}

// The same, in the steady state of a CheckpointManager with retention: before each save,
// every contender deletes its own previous one (the rows above keep every file). On the test
// VM buffered writes (raw, torch::save) are bimodal, 0.19-1.1 s per 400 MB, and the fast mode
// is likelier right after a delete; our save writes large datasets with O_DIRECT (0.19-0.27 s
// either way). Round 0 only makes the first files.
void bench_save_with_retention(CheckpointBench& b) {
  std::vector<double> ours_k, raw_k, torch_k, buffered_k;
  std::error_code ec;
  auto keep1 = [&](const std::string& base, int i, std::vector<double>& out, const std::function<void(const stdfs::path&)>& save) {
    nnx::checkpoint::io::remove_tree(b.dir / (base + std::to_string(i - 1)), ec);
    const double t = time_once([&] { save(b.dir / (base + std::to_string(i))); });
    if (i > 0) out.push_back(t);
  };
  for (int i = 0; i <= b.reps; ++i) {
    keep1("keep-ours", i, ours_k, [&](const stdfs::path& p) { b.save_ours(p); });
    keep1("keep-raw", i, raw_k, [&](const stdfs::path& p) { b.raw_write(p); });
    keep1("keep-torch", i, torch_k, [&](const stdfs::path& p) { b.save_torch(p); });
    keep1("keep-buffered", i, buffered_k, [&](const stdfs::path& p) { b.save_buffered(p); });
  }
  for (const char* base : {"keep-ours", "keep-raw", "keep-torch", "keep-buffered"})
    nnx::checkpoint::io::remove_tree(b.dir / (base + std::to_string(b.reps)), ec);
  b.t_ours_kept = median(ours_k);
  add_rounds("save 400 MB with retention (previous file deleted first)", ours_k, raw_k, " s", "raw write+fsync", 1.10);
  add_rounds("save 400 MB with retention vs torch::save", ours_k, torch_k, " s", "torch::save", 0.85);
  add_rounds("save 400 MB with retention through the page cache (direct_io off)", buffered_k, raw_k, " s", "raw write+fsync", 0);
}

// The restore contenders over the first save's files ("ours0", "raw0", "torch0.pt").
struct RestoreContenders {
  CheckpointBench& b;
  State templ;
  explicit RestoreContenders(CheckpointBench& bench) : b(bench) {
    for (auto& [p, vs] : b.s) templ.insert(p, {vs.kind, at::empty(vs.value.sizes(), at::TensorOptions().device(at::kMeta)), {}});
  }
  void ours(const ReadOptions& o = {}) { b.ck.restore(b.dir / "ours0", Composite{{"params", StandardRestore(templ, o)}}); }
  // Without the structure check before HDF5 opens the file (what it was before): the same
  // metadata read, open and read_state.
  void unchecked() {
    read_metadata(b.dir / "ours0");
    H5File f = H5File::open((b.dir / "ours0" / kCheckpointFile).string());
    read_state(f, "params", templ, ReadOptions{});
  }
  void raw_read() { read_plainly(b.dir / "raw0"); }
  // The checkpoint file itself, every byte (tensors and HDF5 metadata) read the same way: the
  // floor for any restore of that file.
  void raw_read_checkpoint() { read_plainly(b.dir / "ours0" / kCheckpointFile); }
  // One sequential stream of read()s of `f` into fresh 4 MB tensors, to its end.
  static void read_plainly(const stdfs::path& f) {
    int fd = ::open(f.c_str(), O_RDONLY);
    std::vector<at::Tensor> out;
    for (bool eof = false; !eof;) {
      at::Tensor t = at::empty({CheckpointBench::numel});
      char* p = static_cast<char*>(t.data_ptr());
      size_t len = CheckpointBench::numel * 4, done = 0;
      while (done < len && !eof) {
        const ssize_t r = ::read(fd, p + done, len - done);
        eof = r <= 0;
        done += static_cast<size_t>(std::max<ssize_t>(r, 0));
      }
      out.push_back(t);
    }
    ::close(fd);
  }
  void torch_load() {
    std::vector<at::Tensor> out;
    torch::load(out, (b.dir / "torch0.pt").string());
  }
};


// Restore, the files in the page cache for every contender, filled by reading them. Every
// round reads the first save's files (one set, so it stays in the page cache), the contenders
// in a random order (run_shuffled_rounds), six times as many rounds as the save rows (the
// structure check row resolves a 1-2% cost).
void bench_restore_warm(CheckpointBench& b, RestoreContenders& r) {
  std::error_code ec;
  for (int i = 0; i < b.reps; ++i) {
    nnx::checkpoint::io::remove_tree(b.dir / ("buffered" + std::to_string(i)), ec);
    if (i > 0)
      for (const std::string& f : {"ours" + std::to_string(i), "raw" + std::to_string(i), "torch" + std::to_string(i) + ".pt"})
        nnx::checkpoint::io::remove_tree(b.dir / f, ec);
  }
  // Every contender's file leaves the page cache, and the warm-up round below reads it back in,
  // so all cached pages come from reads: a file written with O_DIRECT has none cached, and on
  // this kernel pages filled by reads copy slower than pages left by buffered writes (38-46 vs
  // 25-32 ms per 400 MB, nnx-microbench BM_Restore400MB/x/1 vs /x/0).
  for (const stdfs::path& f : {b.dir / "ours0" / "checkpoint.h5", b.dir / "raw0", b.dir / "torch0.pt"}) evict_from_page_cache(f);
  ReadOptions no_verify;
  no_verify.verify_checksums = false;
  std::vector<double> restore_v, restore_nv_v, read_v, tload_v, unchecked_v;
  std::vector<std::function<void()>> contenders = {
      [&] { restore_v.push_back(time_once([&] { r.ours(); })); },
      [&] { read_v.push_back(time_once([&] { r.raw_read(); })); },
      [&] { restore_nv_v.push_back(time_once([&] { r.ours(no_verify); })); },
      [&] { unchecked_v.push_back(time_once([&] { r.unchecked(); })); },
      [&] { tload_v.push_back(time_once([&] { r.torch_load(); })); }};
  for (const auto& c : contenders) c();  // warm-up round: every file read once, not counted
  restore_v.clear(), read_v.clear(), restore_nv_v.clear(), tload_v.clear(), unchecked_v.clear();
  run_shuffled_rounds(contenders, 6 * b.reps);
  b.restore_s = median(restore_v);
  add_rounds("restore 400 MB (checksums verified)", restore_v, read_v, " s", "raw read", 1.10);
  add_rounds("restore 400 MB without checksum verification", restore_nv_v, read_v, " s", "raw read", 0);
  add_rounds("restore 400 MB vs torch::load", restore_v, tload_v, " s", "torch::load", 0);
  add_rounds("restore 400 MB: the structure check before HDF5 opens the file", restore_v, unchecked_v, " s",
             "without it", 1.05);
}

// Cold: each file dropped from the page cache just before it is read (a resume after preemption
// on another machine reads a cold file); the contenders in a random order each round, six times
// as many rounds as the save rows: a cold read here varies by tens of percent from round to
// round, and the structure check costs under 2% of a cold restore.
// The target's anchor is a plain read of the checkpoint file itself. On the test VM a file
// written with O_DIRECT (our save, or `dd oflag=direct`) reads back cold 1.2-1.3 x slower than
// the same bytes written through the page cache (the raw file), wherever the bytes come from;
// the row against the raw file shows that difference and is reported only.
void bench_restore_cold(CheckpointBench& b, RestoreContenders& r) {
  std::vector<double> cold_ours, cold_same_file, cold_raw, cold_unchecked;
  const stdfs::path ours = b.dir / "ours0" / kCheckpointFile;
  auto cold = [](const stdfs::path& f, std::vector<double>& out, const std::function<void()>& read) {
    evict_from_page_cache(f);
    out.push_back(time_once(read));
  };
  std::vector<std::function<void()>> contenders = {
      [&] { cold(ours, cold_ours, [&] { r.ours(); }); },
      [&] { cold(ours, cold_same_file, [&] { r.raw_read_checkpoint(); }); },
      [&] { cold(b.dir / "raw0", cold_raw, [&] { r.raw_read(); }); },
      [&] { cold(ours, cold_unchecked, [&] { r.unchecked(); }); }};
  run_shuffled_rounds(contenders, 6 * b.reps);
  b.restore_cold_s = median(cold_ours);
  add_rounds("restore 400 MB cold (dropped from the page cache first)", cold_ours, cold_same_file, " s",
             "raw read of the same file, cold", 1.10);
  add_rounds("restore 400 MB cold vs a raw file written through the page cache", cold_ours, cold_raw, " s",
             "raw read, cold", 0);
  add_rounds("restore 400 MB cold: the structure check before HDF5 opens the file", cold_ours, cold_unchecked, " s",
             "without it, cold", 1.05);
}

// The structure check alone (what the rows "the structure check before HDF5 opens the file"
// add), warm and cold, against the restore.
void bench_structure_check(const CheckpointBench& b) {
  const auto st = read_metadata(b.dir / "ours0")["files"][kCheckpointFile]["structure"];
  std::vector<io::ByteRange> skip;
  for (const auto& r : st["skip"]) skip.push_back({r[0].get<int64_t>(), r[1].get<int64_t>()});
  const stdfs::path f = b.dir / "ours0" / kCheckpointFile;
  std::vector<double> warm, cold;
  for (int i = 0; i < b.reps; ++i) warm.push_back(time_once([&] { io::checksum_outside(f, skip); }));
  for (int i = 0; i < b.reps; ++i) {
    evict_from_page_cache(f);
    cold.push_back(time_once([&] { io::checksum_outside(f, skip); }));
  }
  rows.push_back({"structure check alone, 400 MB checkpoint (" + std::to_string(skip.size()) + " large datasets)",
                  "warm " + fmt(median(warm) * 1e3, " ms", 2) + ", cold " + fmt(median(cold) * 1e3, " ms", 2),
                  "restore " + fmt(b.restore_s * 1e3, " ms", 1) + ", cold " + fmt(b.restore_cold_s * 1e3, " ms", 1),
                  fmt(median(warm) / b.restore_s, "", 3) + ", cold " + fmt(median(cold) / b.restore_cold_s, "", 3),
                  "reported", ""});
}

// Async: how long save() blocks the caller (the previous save has finished each time),
// against the sync save; in-save snapshot, then deferred (issue 19: save() records what to
// copy and returns; the copy runs on the pool beside the caller).
void bench_async_blocking(CheckpointBench& b) {
  auto blocking_ms = [&](io::SnapshotTiming timing, const std::string& name) {
    AsyncCheckpointer ack;
    ack.snapshot_timing = timing;
    std::vector<double> blocked;
    for (int i = 0; i < b.reps; ++i) {
      ack.wait_until_finished();
      blocked.push_back(time_once([&] { ack.save(b.dir / (name + std::to_string(i)), Composite{{"params", StandardSave(b.s)}}); }) * 1e3);
    }
    ack.wait_until_finished();
    return median(blocked);
  };
  const double in_save = blocking_ms(io::SnapshotTiming::kInSave, "async") / 1e3;
  add("async save: time save() blocks / sync save", in_save, b.t_ours, " s", "sync save", 0.10);
  add("async save: time save() blocks / sync save with retention", in_save, b.t_ours_kept, " s", "sync save", 0.10);
  // Milliseconds, so the table shows the blocking time's digits.
  const double deferred = blocking_ms(io::SnapshotTiming::kDeferred, "deferred");
  add("async save, deferred snapshot: time save() blocks / sync save", deferred, b.t_ours * 1e3, " ms", "sync save", 0.01);
  add("async save, deferred snapshot: time save() blocks / sync save with retention", deferred, b.t_ours_kept * 1e3,
      " ms", "sync save", 0.01);
}

// Peak memory of a sync save above the state's own size.
void bench_save_peak_memory(CheckpointBench& b) {
  std::ofstream("/proc/self/clear_refs") << "5";  // resets VmHWM
  const int64_t base = rss_kb("VmRSS:");
  b.save_ours(b.dir / "peak");
  const double extra_mb = (rss_kb("VmHWM:") - base) / 1024.0;
  const double allowed = 4.0 + 64.0;  // largest tensor (4 MB) + 64 MB
  rows.push_back({"sync save peak memory above the state", fmt(extra_mb, " MB", 1), "largest tensor 4 MB + 64 MB",
                  fmt(extra_mb / allowed, "", 3), "<= 1.00", extra_mb <= allowed ? "ok" : "MISSED"});
}

void bench_checkpoint(const stdfs::path& dir, int reps) {
  CheckpointBench b(dir, reps);
  bench_save(b);
  bench_save_with_retention(b);
  RestoreContenders r(b);
  bench_restore_warm(b, r);
  bench_restore_cold(b, r);
  bench_structure_check(b);
  bench_async_blocking(b);
  bench_save_peak_memory(b);
}

// ---- restore of one 2.4 GB tensor, cold, against cold raw reads of its file ----------------
// The file the async save wrote (O_DIRECT: none of it cached), dropped from the page cache
// before each read; the contenders alternate in a random order for 5 rounds (a single cold read
// of each varied by 1.23-1.82 x between runs, 12-04 and 12-07, the second read of the same bytes
// profiting from caches below the guest). Two anchors: one stream of read()s (what `cat` does),
// and 4 threads preading 32 MiB pieces into one buffer, as the restore's reader jobs do (this
// VM's disk serves parallel requests much faster than one stream): the hardware's limit.
void read_in_parallel_pieces(const stdfs::path& f, at::Tensor& out) {
  int fd = ::open(f.c_str(), O_RDONLY);
  const uint64_t size = stdfs::file_size(f), piece = uint64_t(32) << 20;
  out = at::empty({static_cast<int64_t>(size)}, at::kByte);
  char* base = static_cast<char*>(out.data_ptr());
  std::atomic<uint64_t> next{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 4; ++t)
    readers.emplace_back([&] {
      for (uint64_t at = next.fetch_add(piece); at < size; at = next.fetch_add(piece))
        for (uint64_t done = 0, len = std::min(piece, size - at); done < len;) {
          const ssize_t r = ::pread(fd, base + at + done, len - done, static_cast<off_t>(at + done));
          if (r <= 0) return;
          done += static_cast<uint64_t>(r);
        }
    });
  for (auto& r : readers) r.join();
  ::close(fd);
}

void bench_restore_big_cold(const stdfs::path& step_dir, const State& templ) {
  const stdfs::path f = step_dir / kCheckpointFile;
  std::vector<double> ours, raw, parallel;
  auto cold = [&](std::vector<double>& out, const std::function<void()>& read) {
    evict_from_page_cache(f);
    out.push_back(time_once(read));
  };
  std::vector<std::function<void()>> contenders = {
      [&] { cold(ours, [&] { Checkpointer().restore(step_dir, Composite{{"params", StandardRestore(templ)}}); }); },
      [&] { cold(raw, [&] { RestoreContenders::read_plainly(f); }); },
      [&] {
        at::Tensor bytes;
        cold(parallel, [&] { read_in_parallel_pieces(f, bytes); });
      }};
  run_shuffled_rounds(contenders, 5);
  for (size_t i = 0; i < ours.size(); ++i)  // the spread behind the medians, on the progress stream
    std::cerr << "  round " << i + 1 << ": restore " << fmt(ours[i], " s") << ", one stream " << fmt(raw[i], " s")
              << ", 4 streams " << fmt(parallel[i], " s") << "\n";
  add_rounds("restore 2.4 GB cold vs a raw read of the same file in 4 streams, cold", ours, parallel, " s",
             "4 x 32 MiB preads, cold", 1.10);
  add_rounds("restore 2.4 GB cold vs a raw read of the same file in one stream, cold", ours, raw, " s",
             "one stream of read(), cold", 0);
}

// ---- restore of one 2.4 GB tensor right after a save in the same process: async vs sync ------
// Issue 18 measured 11-13 s after an async save against about 2 s after a sync one. The async
// checkpointer stays alive during the restore, as a CheckpointManager's does.
void bench_restore_after_save(const stdfs::path& dir) {
  State s;
  s.insert("big", {Param, at::rand({int64_t(600) << 20}), {}});  // 2.4 GB of float32
  State templ;
  templ.insert("big", {Param, at::empty({int64_t(600) << 20}, at::TensorOptions().device(at::kMeta)), {}});
  auto restore = [&](const stdfs::path& p) {
    return time_once([&] { Checkpointer().restore(p, Composite{{"params", StandardRestore(templ)}}); });
  };
  Checkpointer sync;
  sync.save(dir / "big-sync", Composite{{"params", StandardSave(s)}});
  const double after_sync = restore(dir / "big-sync");
  AsyncCheckpointer async;
  async.save(dir / "big-async", Composite{{"params", StandardSave(s)}});
  async.wait_until_finished();
  const double after_async = restore(dir / "big-async");
  add("restore 2.4 GB right after an async save vs after a sync save", after_async, after_sync, " s", "after sync", 1.10);
  bench_restore_big_cold(dir / "big-async", templ);
  std::error_code ec;
  nnx::checkpoint::io::remove_tree(dir / "big-sync", ec);
  nnx::checkpoint::io::remove_tree(dir / "big-async", ec);
}

// ---- checkpoints from GPU memory: 2 GB fp32 in 20 tensors on cuda:0 ----------------------------
// The anchor is what any program has to do at least: copy the bytes to (pinned) host memory and
// write them to a file with fsync. Ours: an AsyncCheckpointer save waited for (in-save snapshot
// into reused pinned buffers, then the direct write path), and the sync Checkpointer.
void bench_gpu_checkpoint(const stdfs::path& dir, int reps) {
  if (!compat::cuda_available()) {
    rows.push_back({"save 2 GB from GPU memory", "-", "no CUDA device in this build or machine", "-", "skipped", ""});
    return;
  }
  const c10::Device gpu(c10::kCUDA, 0);
  State s;
  for (int i = 0; i < 20; ++i)
    s.insert("layer" + std::to_string(i) + "/kernel", {Param, at::randn({25 << 20}, at::TensorOptions().device(gpu)), {}});
  std::vector<at::Tensor> host;  // the anchor's pinned buffers, allocated once
  for (auto& [p, vs] : s) host.push_back(io::DeviceCopies::pinned(vs.value.sizes(), vs.value.scalar_type()));
  auto raw = [&](const stdfs::path& p) {
    size_t i = 0;
    for (auto& [path, vs] : s) host[i++].copy_(vs.value);
    write_raw_fsync(p, host);
  };
  Checkpointer sync;
  AsyncCheckpointer async, deferred;
  deferred.snapshot_timing = io::SnapshotTiming::kDeferred;
  const Composite args{{"params", StandardSave(s)}};
  std::vector<double> raw_v, async_v, sync_v, block_in_save, block_deferred;
  std::error_code ec;
  for (int i = 0; i < reps; ++i) {
    const std::string k = std::to_string(i);
    raw_v.push_back(time_once([&] { raw(dir / ("gpu-raw" + k)); }));
    async_v.push_back(time_once([&] {
      block_in_save.push_back(time_once([&] { async.save(dir / ("gpu-async" + k), args); }));
      async.wait_until_finished();
    }));
    sync_v.push_back(time_once([&] { sync.save(dir / ("gpu-sync" + k), args); }));
    block_deferred.push_back(time_once([&] { deferred.save(dir / ("gpu-deferred" + k), args); }));
    deferred.wait_until_finished();
    for (const char* n : {"gpu-raw", "gpu-async", "gpu-sync", "gpu-deferred"}) nnx::checkpoint::io::remove_tree(dir / (n + k), ec);
  }
  add_rounds("save 2 GB from GPU memory, async save waited for", async_v, raw_v, " s", "D2H copy + raw write+fsync", 1.2);
  add_rounds("save 2 GB from GPU memory, sync Checkpointer", sync_v, raw_v, " s", "D2H copy + raw write+fsync", 1.2);
  add_rounds("async save() blocking, 2 GB GPU state, in-save snapshot", block_in_save, sync_v, " s", "sync save", 0);
  add_rounds("async save() blocking, 2 GB GPU state, deferred snapshot", block_deferred, sync_v, " s", "sync save", 0.01);
}


}  // namespace nnx::bench
