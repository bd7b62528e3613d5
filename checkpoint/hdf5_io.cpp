#include "checkpoint/hdf5_io.h"

#include <ATen/ATen.h>
#include <hdf5.h>
#include <xxhash.h>
#include <xxh_x86dispatch.h>  // XXH3 with the best SIMD the CPU has (AVX2 here); same hash values

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <system_error>
#include <thread>
#include <unordered_set>

#include "framework/error.h"

namespace nnx::checkpoint {

namespace {

// Datasets of this many bytes or more take the I/O fast paths: saves write them with O_DIRECT
// (DirectWriter), restores read them with pread() on reader threads (ReadPipeline).
constexpr int64_t kLargeDataset = int64_t(1) << 20;

// HDF5's error stacks (HDF5-DIAG lines) never reach the user: our errors name the file and the
// dataset in one line. A thread-safe HDF5 (Debian's) keeps the printing switch per thread, so
// every thread that calls HDF5 turns it off for itself, at each entry point of this file.
void silence_hdf5() {
  static std::once_flag once;
  std::call_once(once, [] {
    // HDF5 1.10 crashes in its atexit handler on a file whose close failed (a full disk);
    // the OS reclaims everything at exit anyway.
    H5dont_atexit();
  });
  thread_local bool silenced = false;
  if (!silenced) {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    silenced = true;
  }
}

// RAII for any hid_t.
struct Hid {
  hid_t id = -1;
  herr_t (*close)(hid_t) = nullptr;
  Hid() = default;
  Hid(hid_t i, herr_t (*c)(hid_t)) : id(i), close(c) {}
  Hid(const Hid&) = delete;
  Hid& operator=(const Hid&) = delete;
  Hid(Hid&& o) noexcept : id(o.id), close(o.close) { o.id = -1; }
  Hid& operator=(Hid&& o) noexcept {
    if (this != &o) {
      if (id >= 0 && close) close(id);
      id = o.id;
      close = o.close;
      o.id = -1;
    }
    return *this;
  }
  ~Hid() {
    if (id >= 0 && close) close(id);
  }
  operator hid_t() const { return id; }
  bool ok() const { return id >= 0; }
};

// The file descriptor of an open HDF5 file on the sec2 driver (HDF5's own; valid while the file
// is open), or -1 for any other driver.
int sec2_descriptor(hid_t file) {
  Hid fapl(H5Fget_access_plist(file), H5Pclose);
  void* handle = nullptr;
  if (!fapl.ok() || H5Pget_driver(fapl) != H5FD_SEC2 || H5Fget_vfd_handle(file, fapl, &handle) < 0 || !handle) return -1;
  return *static_cast<int*>(handle);
}

hid_t float16_type() {
  // IEEE half precision as h5py defines it: 1 sign, 5 exponent (bias 15), 10 mantissa bits.
  hid_t t = H5Tcopy(H5T_IEEE_F32LE);
  H5Tset_fields(t, 15, 10, 5, 0, 10);
  H5Tset_size(t, 2);
  H5Tset_ebias(t, 15);
  return t;
}

// The HDF5 type a tensor of `t` is stored as (a new handle).
Hid storage_type(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return Hid(H5Tcopy(H5T_IEEE_F64LE), H5Tclose);
    case at::kFloat: return Hid(H5Tcopy(H5T_IEEE_F32LE), H5Tclose);
    case at::kHalf: return Hid(float16_type(), H5Tclose);
    case at::kBFloat16: return Hid(H5Tcopy(H5T_STD_U16LE), H5Tclose);
    case at::kLong: return Hid(H5Tcopy(H5T_STD_I64LE), H5Tclose);
    case at::kInt: return Hid(H5Tcopy(H5T_STD_I32LE), H5Tclose);
    case at::kShort: return Hid(H5Tcopy(H5T_STD_I16LE), H5Tclose);
    case at::kChar: return Hid(H5Tcopy(H5T_STD_I8LE), H5Tclose);
    case at::kByte: return Hid(H5Tcopy(H5T_STD_U8LE), H5Tclose);
    case at::kBool: return Hid(H5Tcopy(H5T_STD_U8LE), H5Tclose);
    default: NNX_CHECK(false, "dtype ", t, " cannot be checkpointed");
  }
  return {};
}

Hid vlen_string_type() {
  hid_t t = H5Tcopy(H5T_C_S1);
  H5Tset_size(t, H5T_VARIABLE);
  H5Tset_cset(t, H5T_CSET_UTF8);
  return Hid(t, H5Tclose);
}

void write_string_attr(hid_t obj, const char* name, const std::string& value, const std::string& where) {
  Hid type = vlen_string_type();
  Hid space(H5Screate(H5S_SCALAR), H5Sclose);
  Hid attr(H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  NNX_CHECK_IO(attr.ok(), "cannot create attribute '", name, "' on ", where);
  const char* p = value.c_str();
  NNX_CHECK_IO(H5Awrite(attr, type, &p) >= 0, "cannot write attribute '", name, "' on ", where);
}

// Reads a string attribute that exists.
std::string read_present_string_attr(hid_t obj, const char* name, const std::string& where) {
  Hid attr(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
  NNX_CHECK(attr.ok(), "cannot open attribute '", name, "' of ", where);
  Hid ftype(H5Aget_type(attr), H5Tclose);
  NNX_CHECK(H5Tget_class(ftype) == H5T_STRING, "attribute '", name, "' of ", where, " is not a string");
  Hid type = vlen_string_type();
  if (H5Tis_variable_str(ftype) > 0) {
    char* p = nullptr;
    NNX_CHECK(H5Aread(attr, type, &p) >= 0, "cannot read attribute '", name, "' of ", where);
    std::string out = p ? p : "";
    if (p) H5free_memory(p);
    return out;
  }
  size_t n = H5Tget_size(ftype);
  std::string out(n, '\0');
  NNX_CHECK(H5Aread(attr, ftype, out.data()) >= 0, "cannot read attribute '", name, "' of ", where);
  out.resize(strnlen(out.data(), n));
  return out;
}

std::optional<std::string> read_string_attr(hid_t obj, const char* name, const std::string& where) {
  if (H5Aexists(obj, name) <= 0) return std::nullopt;
  return read_present_string_attr(obj, name, where);
}

// The names of an object's attributes, from one pass over its header (cheaper than one
// H5Aexists per name when several are read).
std::unordered_set<std::string> attribute_names(hid_t obj, const std::string& where) {
  std::unordered_set<std::string> names;
  auto add = [](hid_t, const char* name, const H5A_info_t*, void* out) -> herr_t {
    static_cast<std::unordered_set<std::string>*>(out)->insert(name);
    return 0;
  };
  NNX_CHECK(H5Aiterate2(obj, H5_INDEX_NAME, H5_ITER_NATIVE, nullptr, add, &names) >= 0,
            "cannot list the attributes of ", where);
  return names;
}

void write_i64_array_attr(hid_t obj, const char* name, const std::vector<int64_t>& v, const std::string& where) {
  hsize_t n = v.size();
  Hid space(H5Screate_simple(1, &n, nullptr), H5Sclose);  // n = 0: an empty array (rank 0)
  Hid attr(H5Acreate2(obj, name, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  NNX_CHECK_IO(attr.ok(), "cannot create attribute '", name, "' on ", where);
  if (n > 0) NNX_CHECK_IO(H5Awrite(attr, H5T_NATIVE_INT64, v.data()) >= 0, "cannot write attribute '", name, "' on ", where);
}

std::optional<std::vector<int64_t>> read_i64_array_attr(hid_t obj, const char* name, const std::string& where,
                                                       bool known_present = false) {
  if (!known_present && H5Aexists(obj, name) <= 0) return std::nullopt;
  Hid attr(H5Aopen(obj, name, H5P_DEFAULT), H5Aclose);
  Hid space(H5Aget_space(attr), H5Sclose);
  hssize_t n = H5Sget_simple_extent_npoints(space);
  NNX_CHECK(n >= 0 && n <= 64, "attribute '", name, "' of ", where, " is malformed");
  std::vector<int64_t> v(static_cast<size_t>(n));
  if (n > 0) NNX_CHECK(H5Aread(attr, H5T_NATIVE_INT64, v.data()) >= 0, "cannot read attribute '", name, "' of ", where);
  return v;
}

std::string where_of(const H5File& f, const std::string& item, const std::string& path) {
  return "'" + f.path() + "' dataset /" + item + "/" + path;
}

bool link_exists(hid_t loc, const std::string& path) {
  // H5Lexists fails on missing intermediate groups; check each prefix.
  size_t pos = 0;
  while (true) {
    pos = path.find('/', pos + 1);
    std::string prefix = path.substr(0, pos);
    if (H5Lexists(loc, prefix.c_str(), H5P_DEFAULT) <= 0) return false;
    if (pos == std::string::npos) return true;
  }
}

// Rows per slab so one I/O call moves at most max_bytes.
int64_t rows_per_slab(const at::Tensor& t, int64_t max_bytes) {
  int64_t row_bytes = t.dim() == 0 ? t.element_size() : t.numel() / std::max<int64_t>(t.size(0), 1) * t.element_size();
  return std::max<int64_t>(1, max_bytes / std::max<int64_t>(row_bytes, 1));
}

void dataset_io(bool write, hid_t dset, hid_t type, const at::Tensor& t, int64_t max_bytes, const std::string& where) {
  const int64_t nbytes = t.numel() * t.element_size();
  if (nbytes == 0) return;
  void* base = t.data_ptr();
  if (t.dim() == 0 || nbytes <= max_bytes) {
    herr_t r = write ? H5Dwrite(dset, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, base)
                     : H5Dread(dset, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, base);
    if (write) NNX_CHECK_IO(r >= 0, "cannot write ", where, " (", nbytes, " bytes; disk full?)");
    else NNX_CHECK(r >= 0, "cannot read ", where, " (file truncated or corrupt?)");
    return;
  }
  const int64_t rows = t.size(0), per = rows_per_slab(t, max_bytes);
  const int64_t row_bytes = nbytes / rows;
  std::vector<hsize_t> dims(t.sizes().begin(), t.sizes().end());
  Hid fspace(H5Dget_space(dset), H5Sclose);
  for (int64_t r0 = 0; r0 < rows; r0 += per) {
    int64_t r1 = std::min(rows, r0 + per);
    std::vector<hsize_t> start(dims.size(), 0), count = dims;
    start[0] = static_cast<hsize_t>(r0);
    count[0] = static_cast<hsize_t>(r1 - r0);
    H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr);
    Hid mspace(H5Screate_simple(static_cast<int>(count.size()), count.data(), nullptr), H5Sclose);
    char* p = static_cast<char*>(base) + r0 * row_bytes;
    herr_t r = write ? H5Dwrite(dset, type, mspace, fspace, H5P_DEFAULT, p)
                     : H5Dread(dset, type, mspace, fspace, H5P_DEFAULT, p);
    if (write) NNX_CHECK_IO(r >= 0, "cannot write rows [", r0, ", ", r1, ") of ", where, " (disk full?)");
    else NNX_CHECK(r >= 0, "cannot read rows [", r0, ", ", r1, ") of ", where, " (file truncated or corrupt?)");
  }
}

std::string metadata_json(const Metadata& m) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [k, v] : m) j[k] = v;
  return j.dump();
}

// Background threads that take jobs in submission order. finish() waits for all of them and
// rethrows the error of the earliest submitted job that failed (the same one on every run,
// with its type kept); the destructor (an exception unwinding read_state) waits too, so no
// job outlives the tensors and file it uses.
class Workers {
 public:
  explicit Workers(int threads) : max_threads_(threads) {}
  Workers(const Workers&) = delete;
  Workers& operator=(const Workers&) = delete;
  ~Workers() { join(); }
  void submit(std::function<void()> job) {
    bool run_here = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      NNX_INTERNAL_ASSERT(!done_, "a job submitted after finish()");
      queue_.push_back({submitted_++, std::move(job)});
      // Threads start with the first jobs: a restore of small variables starts none.
      if (static_cast<int>(threads_.size()) < max_threads_ && queue_.size() > idle_) {
        try {
          threads_.emplace_back([this] { run(); });
        } catch (const std::system_error&) {  // no thread to be had: with none running, the
          run_here = threads_.empty();        // caller runs the queue itself, so no job is lost
        }
      }
      cv_.notify_one();
    }
    if (run_here) drain();
  }
  void finish() {
    join();
    if (error_) std::rethrow_exception(error_);
  }

 private:
  struct Job {
    uint64_t index = 0;
    std::function<void()> run;
  };
  void join() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
      cv_.notify_all();
    }
    for (auto& t : threads_)
      if (t.joinable()) t.join();
  }
  void run() {
    while (true) {
      Job job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        ++idle_;
        cv_.wait(lock, [&] { return done_ || !queue_.empty(); });
        --idle_;
        if (queue_.empty()) return;
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      run_one(job);
    }
  }
  // Runs the queued jobs on the calling thread until the queue is empty.
  void drain() {
    while (true) {
      Job job;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (queue_.empty()) return;
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      run_one(job);
    }
  }
  void run_one(Job& job) {
    try {
      job.run();
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      if (!error_ || job.index < error_index_) {
        error_ = std::current_exception();
        error_index_ = job.index;
      }
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> queue_;
  uint64_t submitted_ = 0;
  bool done_ = false;
  size_t idle_ = 0;  // threads waiting for a job
  std::exception_ptr error_;
  uint64_t error_index_ = 0;
  int max_threads_;
  std::vector<std::thread> threads_;
};

void expect_checksum(const std::string& sum, const std::string& expected, const std::string& where) {
  NNX_CHECK(sum == expected, where, ": checksum mismatch (stored ", expected, ", data ", sum, "); the checkpoint is corrupt");
}

void check_sum_now(const at::Tensor& t, const std::string& expected, const std::string& where) {
  size_t nbytes = static_cast<size_t>(t.numel() * t.element_size());
  expect_checksum(checksum_bytes(nbytes ? t.data_ptr() : nullptr, nbytes), expected, where);
}

// How read_state overlaps its work: HDF5 calls (opening datasets, reading attributes) stay on
// the calling thread, since HDF5 is not reentrant. The bytes of a large dataset stored
// contiguously are read with pread() at the offset HDF5 reports, on reader threads, in slices
// that are hashed while they are still in the core's cache (XXH3's streaming form, equal to
// the one-shot hash). Large tensors read by HDF5 are hashed on the reader threads too. Nothing
// read is handed out before finish().
class ReadPipeline {
 public:
  // `file` must stay open until finish() or destruction; its descriptor is read with pread().
  ReadPipeline(const H5File& file, bool verify, ReadStats* stats)
      : file_id_(file.id()), dir_(std::filesystem::path(file.path()).parent_path()), fd_(sec2_descriptor(file.id())),
        verify_(verify), stats_(stats), workers_(std::clamp(static_cast<int>(std::thread::hardware_concurrency()), 2, 4)) {}
  // pread() works on this file: HDF5's own descriptor (the sec2 driver), so the bytes come
  // from the very file HDF5 opened even if its path is renamed, deleted or replaced since.
  bool direct() const { return fd_ >= 0; }
  void count(bool direct_read, int64_t nbytes) {
    if (!stats_) return;
    (direct_read ? stats_->direct_reads : stats_->hdf5_reads) += 1;
    stats_->bytes += nbytes;
  }
  // Verifies `t` (already read) against `expected`: here when small, else on a reader thread.
  void check(const at::Tensor& t, std::string expected, std::string where) {
    if (!verify_) return;
    if (t.numel() * t.element_size() < kLargeDataset) return check_sum_now(t, expected, where);
    workers_.submit([t, expected = std::move(expected), where = std::move(where)] { check_sum_now(t, expected, where); });
  }
  // Fills contiguous `t` from the file's bytes [offset, offset + nbytes) on a reader thread and,
  // when this pipeline verifies, checks them against `expected`.
  void read_at(const at::Tensor& t, uint64_t offset, std::string expected, std::string where) {
    read_at(t, fd_, offset, std::move(expected), std::move(where));
  }
  // The same from another file's descriptor (a source of a virtual dataset, see source()).
  void read_at(const at::Tensor& t, int fd, uint64_t offset, std::string expected, std::string where) {
    NNX_INTERNAL_ASSERT(fd >= 0, "no descriptor for direct reads of ", where);
    count(true, t.numel() * t.element_size());
    if (static_cast<size_t>(t.numel() * t.element_size()) >= 2 * kPiece)
      return read_in_pieces(t, fd, offset, std::move(expected), std::move(where));
    workers_.submit([this, t, fd, offset, expected = std::move(expected), where = std::move(where)] {
      char* p = static_cast<char*>(t.data_ptr());
      const size_t n = static_cast<size_t>(t.numel() * t.element_size());
      std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> hash(verify_ ? XXH3_createState() : nullptr, XXH3_freeState);
      NNX_CHECK(!verify_ || (hash && XXH3_64bits_reset(hash.get()) == XXH_OK), "cannot start a checksum for ", where);
      read_slices(fd, p, n, offset, where, hash.get());
      if (hash) expect_checksum(format_checksum(XXH3_64bits_digest(hash.get())), expected, where);
    });
  }
  // A dataset of 64 MiB or more: its 32 MiB pieces are read by all reader threads at once
  // (one stream of preads leaves the disk idle between requests: a 2.4 GB tensor read 2.5 x
  // slower than the file), then the last piece's thread hashes the whole tensor.
  void read_in_pieces(const at::Tensor& t, int fd, uint64_t offset, std::string expected, std::string where) {
    char* p = static_cast<char*>(t.data_ptr());
    const size_t n = static_cast<size_t>(t.numel() * t.element_size());
    const size_t pieces = (n + kPiece - 1) / kPiece;
    auto left = std::make_shared<std::atomic<size_t>>(pieces);
    auto shared_where = std::make_shared<const std::string>(std::move(where));
    auto shared_expected = std::make_shared<const std::string>(std::move(expected));
    for (size_t i = 0; i < pieces; ++i)
      workers_.submit([this, t, p, n, i, fd, offset, left, shared_where, shared_expected] {
        const size_t from = i * kPiece;
        read_slices(fd, p + from, std::min(kPiece, n - from), offset + from, *shared_where, nullptr);
        if (left->fetch_sub(1) == 1 && verify_) check_sum_now(t, *shared_expected, *shared_where);
      });
  }
  // Waits for every read and checksum; throws the first failure.
  void finish() { workers_.finish(); }

  // Reads the file's bytes [offset, offset + n) into `p` in kSlice slices, each added to `hash`
  // (when set) while it is still in the core's cache. Throws nnx::Error naming `where`.
  static void read_slices(int fd, char* p, size_t n, uint64_t offset, const std::string& where, XXH3_state_t* hash) {
    for (size_t done = 0; done < n;) {
      ssize_t r = ::pread(fd, p + done, std::min(n - done, kSlice), static_cast<off_t>(offset + done));
      if (r < 0 && errno == EINTR) continue;
      NNX_CHECK(r > 0, "cannot read ", where, ": ", r < 0 ? std::strerror(errno) : "unexpected end of file",
                " (file truncated or corrupt?)");
      if (hash) XXH3_64bits_update_dispatch(hash, p + done, static_cast<size_t>(r));
      done += static_cast<size_t>(r);
    }
  }

  // A source file of a virtual dataset (a rank's shard), opened once per read_state and kept
  // open until the reads finish: its HDF5 id and its descriptor (-1, -1 when it cannot be
  // opened or is not on the sec2 driver; the caller then reads through H5Dread). Names are
  // relative to this file's directory, "." is this file.
  struct Source {
    hid_t file = -1;
    int fd = -1;
  };
  Source source(const std::string& name) {
    if (name == ".") return {file_id_, fd_};
    auto it = sources_.find(name);
    if (it == sources_.end()) {
      std::filesystem::path p(name);
      if (p.is_relative()) p = dir_ / p;
      try {
        it = sources_.emplace(name, H5File::open(p.string())).first;
      } catch (const Error&) {
        return {};
      }
    }
    return {it->second.id(), sec2_descriptor(it->second.id())};
  }

 private:
  static constexpr size_t kSlice = size_t(256) << 10;   // read, then hashed from the cache
  static constexpr size_t kPiece = size_t(32) << 20;    // of a dataset read by several threads
  hid_t file_id_;
  std::filesystem::path dir_;
  int fd_;
  bool verify_;
  ReadStats* stats_;
  std::map<std::string, H5File> sources_;  // declared before workers_, so destroyed after it: the
                                           // workers' destructor joins the reads first
  Workers workers_;
};

// O_DIRECT needs the file offset, the length and the memory address of each write aligned to
// the file system's block size; 4 KiB covers every Linux file system on disks with logical
// blocks of 512 bytes or 4 KiB.
constexpr size_t kPage = 4096;
// The largest single write of the direct path (and the size of a staging buffer).
constexpr size_t kDirectSlice = size_t(4) << 20;
// Staging buffers in use at once, process-wide (32 MiB): the bound on the direct path's extra
// memory, and enough to keep every writer thread busy while the next slices are staged.
constexpr size_t kStagingBuffers = 8;

// Page-aligned kDirectSlice buffers through which memory that is not page-aligned reaches an
// O_DIRECT write. At most kStagingBuffers exist (take() waits for one to come back), and they
// are kept for the process's lifetime, so a save does not fault in fresh pages for them.
class StagingBuffers {
 public:
  static StagingBuffers& instance() {
    static StagingBuffers* pool = new StagingBuffers;  // never destroyed: no order problem at exit
    return *pool;
  }
  char* take() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return !free_.empty() || made_ < kStagingBuffers; });
    if (!free_.empty()) {
      char* p = free_.back();
      free_.pop_back();
      return p;
    }
    void* p = nullptr;
    if (::posix_memalign(&p, kPage, kDirectSlice) != 0) throw std::bad_alloc();
    ++made_;
    return static_cast<char*>(p);
  }
  void give(char* p) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      free_.push_back(p);
    }
    cv_.notify_one();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<char*> free_;
  size_t made_ = 0;
};

// Writes `n` bytes at `offset` through `fd` (buffered); throws nnx::IOError naming `where`.
void pwrite_all(int fd, const char* p, size_t n, uint64_t offset, const std::string& where) {
  for (size_t done = 0; done < n;) {
    ssize_t r = ::pwrite(fd, p + done, n - done, static_cast<off_t>(offset + done));
    if (r < 0 && errno == EINTR) continue;
    NNX_CHECK_IO(r > 0, "cannot write ", n - done, " bytes of ", where, " at file offset ", offset + done, ": ",
                 r < 0 ? std::strerror(errno) : "no progress", " (disk full?)");
    done += static_cast<size_t>(r);
  }
}

}  // namespace

// The direct write path (WriteOptions::direct_io). HDF5 allocates a large dataset's space when
// it is created (contiguous, 4 KiB aligned) and never touches those bytes; this writes them with
// O_DIRECT, in slices of up to 4 MiB on 4 writer threads (they wait on the disk, not on a core),
// so several writes are in flight and no copy goes through the page cache. The calling thread
// hashes each slice for the dataset's checksum while it stages it: memory that is not page-aligned
// is copied into a staging buffer in 256 KiB pieces, each hashed while it is in the core's cache,
// so the bytes are read once for both. The dataset's last partial page is written through the
// page cache: O_DIRECT writes cover whole pages that nothing else writes, so the two never meet
// in one page. finish() waits for every write.
class DirectWriter {
 public:
  // `fd` is HDF5's descriptor of the file; the file is opened again through /proc/self/fd
  // (so the writes reach the very file HDF5 created), once with O_DIRECT and once without
  // (partial pages; writes O_DIRECT refuses), and these writes may go on after HDF5 closed it.
  explicit DirectWriter(int fd) : workers_(4) {
    const std::string self = "/proc/self/fd/" + std::to_string(fd);
    fd_.fd = ::open(self.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd_.fd >= 0) direct_fd_.fd = ::open(self.c_str(), O_WRONLY | O_DIRECT | O_CLOEXEC);
  }
  DirectWriter(const DirectWriter&) = delete;
  DirectWriter& operator=(const DirectWriter&) = delete;
  bool enabled() const { return direct_fd_.fd >= 0; }

  // Writes contiguous CPU tensor `t`'s bytes at file offset `offset` (a multiple of kPage) and
  // returns their checksum (checksum_bytes's value). Keeps `t` alive until this writer is
  // destroyed. Waits while every staging buffer is in use.
  std::string write(const at::Tensor& t, uint64_t offset, const std::string& where) {
    NNX_INTERNAL_ASSERT(offset % kPage == 0 && t.is_contiguous() && t.is_cpu(), "bad direct write of ", where);
    const char* p = static_cast<const char*>(t.data_ptr());
    const uint64_t n = static_cast<uint64_t>(t.numel()) * t.element_size();
    const uint64_t body = n / kPage * kPage;
    keep_.push_back(t);
    ranges_.push_back({static_cast<int64_t>(offset), static_cast<int64_t>(n), p});
    // After a failed write the save fails at finish(): stage and write nothing more.
    if (failed_.load()) return std::string();
    NNX_CHECK(hash_ && XXH3_64bits_reset(hash_.get()) == XXH_OK, "cannot start a checksum for ", where);
    const bool aligned = reinterpret_cast<uintptr_t>(p) % kPage == 0;
    for (uint64_t off = 0; off < body; off += kDirectSlice) {
      const size_t len = static_cast<size_t>(std::min<uint64_t>(kDirectSlice, body - off));
      char* staged = nullptr;
      if (aligned) {
        XXH3_64bits_update_dispatch(hash_.get(), p + off, len);
      } else {
        staged = StagingBuffers::instance().take();
        for (size_t piece = 0; piece < len; piece += kHashPiece) {
          const size_t m = std::min(kHashPiece, len - piece);
          std::memcpy(staged + piece, p + off + piece, m);
          XXH3_64bits_update_dispatch(hash_.get(), staged + piece, m);
        }
      }
      workers_.submit([this, from = staged ? staged : p + off, staged, len, at = offset + off, where] {
        struct GiveBack {
          char* p;
          ~GiveBack() {
            if (p) StagingBuffers::instance().give(p);
          }
        } give_back{staged};
        if (!failed_.load()) guarded([&] { write_slice(from, len, at, where); });
      });
    }
    // The last partial page, through the page cache (on a writer thread too: a write that
    // extends the file waits for the inode lock the direct writes hold).
    if (body < n) {
      XXH3_64bits_update_dispatch(hash_.get(), p + body, n - body);
      workers_.submit([this, src = p + body, len = n - body, at = offset + body, where] {
        if (!failed_.load()) guarded([&] { pwrite_all(fd_.fd, src, len, at, where); });
      });
    }
    return format_checksum(XXH3_64bits_digest(hash_.get()));
  }
  // Waits for every write; throws the nnx::IOError of the earliest that failed.
  void finish() { workers_.finish(); }
  const std::vector<fs::MemoryRange>& ranges() const { return ranges_; }
  // Unwinding (a save that failed before commit): the queued writes are skipped, not made.
  ~DirectWriter() { failed_ = true; }

 private:
  // Runs a write; on failure marks the writer failed (later writes are skipped) and rethrows.
  template <typename F>
  void guarded(F&& f) {
    try {
      f();
    } catch (...) {
      failed_ = true;
      throw;
    }
  }

  static constexpr size_t kHashPiece = size_t(256) << 10;

  // Writes page-aligned `len` bytes at `at` with O_DIRECT (through the page cache once the file
  // system refused an O_DIRECT write with EINVAL).
  void write_slice(const char* from, size_t len, uint64_t at, const std::string& where) {
    for (size_t done = 0; done < len;) {
      const bool direct = !buffered_.load();
      ssize_t r = ::pwrite(direct ? direct_fd_.fd : fd_.fd, from + done, len - done, static_cast<off_t>(at + done));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0 && errno == EINVAL && direct) {  // the file system refuses this O_DIRECT write
        buffered_ = true;
        continue;
      }
      NNX_CHECK_IO(r > 0, "cannot write ", len - done, " bytes of ", where, " at file offset ", at + done, ": ",
                   r < 0 ? std::strerror(errno) : "no progress", " (disk full?)");
      done += static_cast<size_t>(r);
    }
  }

  struct Fd {
    int fd = -1;
    ~Fd() {
      if (fd >= 0) ::close(fd);
    }
  };
  std::atomic<bool> buffered_{false};
  std::atomic<bool> failed_{false};
  std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> hash_{XXH3_createState(), XXH3_freeState};
  // Declared before workers_, so the writer threads are joined (by its destructor) before the
  // descriptors close and the memory of ranges_ is released.
  Fd fd_, direct_fd_;
  std::vector<at::Tensor> keep_;
  std::vector<fs::MemoryRange> ranges_;
  Workers workers_;
};

std::string checksum_bytes(const void* data, size_t n) { return format_checksum(XXH3_64bits_dispatch(data, n)); }

std::string format_checksum(uint64_t xxh3_64) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "xxh3_64:%016llx", static_cast<unsigned long long>(xxh3_64));
  return buf;
}

H5File H5File::create(const std::string& path) {
  silence_hdf5();
  Hid fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  // v1.8+ object headers carry checksums of HDF5's own metadata.
  H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_LATEST);
  // Closing the file closes everything in it, also after a failed write (full disk).
  H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG);
  // Data of 64 KiB and more starts on a 4 KiB boundary, so reads copy whole pages of the page
  // cache into 64-byte aligned tensors; the padding costs under 4 KiB per large dataset.
  H5Pset_alignment(fapl, 64 << 10, 4096);
  // HDF5's own metadata (object headers, attributes, group links) is allocated from blocks of
  // 256 KiB instead of 2 KiB, so it sits in a few contiguous runs instead of beside every
  // dataset: the structure check before a restore, and HDF5's own reads of it after, read a
  // few runs instead of one small piece per dataset (on a cold file, a disk request each).
  H5Pset_meta_block_size(fapl, 256 << 10);
  hid_t id = H5Fcreate(path.c_str(), H5F_ACC_EXCL, H5P_DEFAULT, fapl);
  NNX_CHECK_IO(id >= 0, "cannot create HDF5 file '", path, "'");
  return H5File(id, path);
}

H5File H5File::open(const std::string& path) {
  silence_hdf5();
  hid_t id = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  NNX_CHECK(id >= 0, "cannot open '", path, "' as HDF5 (missing, truncated or not a checkpoint)");
  return H5File(id, path);
}

H5File::H5File(H5File&& o) noexcept
    : id_(o.id_),
      path_(std::move(o.path_)),
      direct_(std::move(o.direct_)),
      direct_tried_(o.direct_tried_),
      raw_extents_(std::move(o.raw_extents_)) {
  o.id_ = -1;
}
H5File& H5File::operator=(H5File&& o) noexcept {
  if (this != &o) {
    if (id_ >= 0) H5Fclose(id_);
    id_ = o.id_;
    path_ = std::move(o.path_);
    direct_ = std::move(o.direct_);
    direct_tried_ = o.direct_tried_;
    raw_extents_ = std::move(o.raw_extents_);
    o.id_ = -1;
  }
  return *this;
}
H5File::~H5File() {
  if (id_ >= 0) H5Fclose(id_);
}
bool H5File::close_hdf5() {
  hid_t id = id_;
  id_ = -1;
  herr_t r1 = H5Fflush(id, H5F_SCOPE_LOCAL);
  herr_t r2 = H5Fclose(id);
  return r1 >= 0 && r2 >= 0;
}
void H5File::close() {
  silence_hdf5();
  if (id_ < 0) return;
  const bool closed = close_hdf5();
  if (direct_) direct_->finish();  // names the dataset of a failed write
  NNX_CHECK_IO(closed, "cannot flush and close '", path_, "' (disk full?)");
}
std::pair<int64_t, std::string> H5File::commit() {
  silence_hdf5();
  NNX_CHECK(id_ >= 0, "cannot commit '", path_, "': it is already closed");
  if (!direct_) {
    close();
    return fs::fsync_and_checksum(path_);
  }
  // Closed, the file has its final size (HDF5 extends it to its end of allocation), so it can be
  // hashed while the direct writes go on.
  const bool closed = close_hdf5();
  std::pair<int64_t, std::string> out;
  std::exception_ptr hash_error;
  if (closed) {
    try {
      std::vector<fs::MemoryRange> ranges = direct_->ranges();
      std::sort(ranges.begin(), ranges.end(), [](const fs::MemoryRange& a, const fs::MemoryRange& b) { return a.offset < b.offset; });
      out = fs::file_size_and_checksum(path_, ranges);
    } catch (...) {
      hash_error = std::current_exception();
    }
  }
  direct_->finish();
  NNX_CHECK_IO(closed, "cannot flush and close '", path_, "' (disk full?)");
  fs::fsync_path(path_);
  if (hash_error) std::rethrow_exception(hash_error);
  return out;
}
nlohmann::json H5File::structure() const {
  std::vector<fs::ByteRange> skip = raw_extents_;
  std::sort(skip.begin(), skip.end(), [](const fs::ByteRange& a, const fs::ByteRange& b) { return a.offset < b.offset; });
  const auto sum = fs::checksum_outside(path_, skip).second;
  nlohmann::json ranges = nlohmann::json::array();
  for (const auto& r : skip) ranges.push_back({r.offset, r.size});
  return {{"checksum", sum}, {"skip", std::move(ranges)}};
}

DirectWriter* H5File::direct_writer() {
  if (id_ < 0) return nullptr;
  if (!direct_tried_) {
    direct_tried_ = true;
    const int fd = sec2_descriptor(id_);
    if (fd >= 0) {
      auto w = std::make_shared<DirectWriter>(fd);
      if (w->enabled()) direct_ = std::move(w);
    }
  }
  return direct_.get();
}

namespace {

struct ItemWriter {
  Hid lcpl, gcpl, dcpl, dcpl_early, group;
  H5File& file;
  std::string file_path, item;
  nlohmann::json paths = nlohmann::json::array();
  int fd = -1;  // the file's descriptor (sec2 driver), to start writeback early

  ItemWriter(H5File& f, const std::string& item_name)
      : file(f), file_path(f.path()), item(item_name), fd(sec2_descriptor(f.id())) {
    NNX_CHECK(!item.empty() && item != "json" && item.find('/') == std::string::npos,
              "invalid checkpoint item name '", item, "'");
    lcpl = Hid(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
    H5Pset_create_intermediate_group(lcpl, 1);
    // No modification times in object headers: the same state gives the same bytes.
    gcpl = Hid(H5Pcreate(H5P_GROUP_CREATE), H5Pclose);
    H5Pset_obj_track_times(gcpl, 0);
    group = Hid(H5Gcreate2(file.id(), ("/" + item).c_str(), lcpl, gcpl, H5P_DEFAULT), H5Gclose);
    NNX_CHECK_IO(group.ok(), "cannot create group /", item, " in '", file.path(), "'");
    dcpl = Hid(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
    H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER);  // every byte is written; no fill pass
    H5Pset_obj_track_times(dcpl, 0);
    // The direct write path's datasets: contiguous, their space allocated at creation (so its
    // file offset is known) and never written by HDF5.
    dcpl_early = Hid(H5Pcopy(dcpl), H5Pclose);
    H5Pset_layout(dcpl_early, H5D_CONTIGUOUS);
    H5Pset_alloc_time(dcpl_early, H5D_ALLOC_TIME_EARLY);
  }

  static Hid dataspace(const std::vector<int64_t>& shape) {
    std::vector<hsize_t> dims(shape.begin(), shape.end());
    return Hid(shape.empty() ? H5Screate(H5S_SCALAR) : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr),
               H5Sclose);
  }

  void attrs(hid_t dset, const std::string& where, const VariableState& vs, const std::string& dtype,
             const std::vector<int64_t>& shape, const std::string& checksum) {
    write_string_attr(dset, "nnx_kind", vs.kind.name(), where);
    write_string_attr(dset, "dtype", dtype, where);
    write_i64_array_attr(dset, "shape", shape, where);
    auto sh = vs.metadata.find("sharding");
    write_string_attr(dset, "sharding", sh == vs.metadata.end() ? "" : sh->second, where);
    write_string_attr(dset, "metadata", metadata_json(vs.metadata), where);
    write_string_attr(dset, "checksum", checksum, where);
  }

  void write(const std::string& path, const VariableState& vs, const WriteOptions& options) {
    const std::string where = "'" + file_path + "' dataset /" + item + "/" + path;
    NNX_CHECK(vs.value.defined() && !vs.value.is_meta(), "cannot save ", where,
              ": the tensor is ", vs.value.defined() ? "abstract (meta)" : "undefined");
    at::Tensor t = vs.value.detach();
    if (!t.device().is_cpu()) t = t.cpu();
    t = t.contiguous();  // a view writes only its own elements
    Hid type = storage_type(t.scalar_type());
    Hid space = dataspace(t.sizes().vec());
    const size_t nbytes = static_cast<size_t>(t.numel() * t.element_size());
    const bool large = static_cast<int64_t>(nbytes) >= kLargeDataset;
    // The stored type has the memory's bytes (little-endian; bool and bfloat16 as their bits),
    // so the direct path writes the tensor's bytes as they are. Only the caller's own memory:
    // the direct path keeps what it writes until commit (the file checksum is computed from
    // it), which for a temporary (a CUDA tensor's host copy, a view made contiguous) would hold
    // a host copy of the whole state; those go through H5Dwrite.
    DirectWriter* direct = options.direct_io && large && t.is_alias_of(vs.value) ? file.direct_writer() : nullptr;
    Hid dset(H5Dcreate2(group, path.c_str(), type, space, lcpl, direct ? dcpl_early : dcpl, H5P_DEFAULT), H5Dclose);
    NNX_CHECK_IO(dset.ok(), "cannot create ", where);
    const haddr_t offset = large ? H5Dget_offset(dset) : HADDR_UNDEF;
    const bool written_directly = direct && offset != HADDR_UNDEF && offset % kPage == 0;
    std::string checksum;
    if (written_directly) {
      checksum = direct->write(t, offset, where);
    } else {
      checksum = checksum_bytes(nbytes ? t.data_ptr() : nullptr, nbytes);
      dataset_io(true, dset, type, t, options.max_write_bytes, where);
      // Start writing a large dataset's pages to disk now (sync_file_range only queues them),
      // so the disk works while the next tensors are copied; the commit's fsync waits for them.
      if (fd >= 0 && offset != HADDR_UNDEF)
        ::sync_file_range(fd, static_cast<off64_t>(offset), static_cast<off64_t>(nbytes), SYNC_FILE_RANGE_WRITE);
    }
    if (options.stats) {
      (written_directly ? options.stats->direct_writes : options.stats->hdf5_writes) += 1;
      options.stats->bytes += static_cast<int64_t>(nbytes);
    }
    // Raw data only, checked by the dataset's own checksum: the structure checksum skips it.
    const haddr_t at = offset != HADDR_UNDEF || !large ? offset : H5Dget_offset(dset);
    if (at != HADDR_UNDEF) file.note_raw_extent(static_cast<int64_t>(at), static_cast<int64_t>(nbytes));
    attrs(dset, where, vs, dtype_name(t.scalar_type()), t.sizes().vec(), checksum);
    paths.push_back(path);
  }

  void write_virtual(const std::string& path, const VariableState& vs, const VirtualSource& src,
                     const WriteOptions& options) {
    const std::string where = "'" + file_path + "' dataset /" + item + "/" + path;
    NNX_INTERNAL_ASSERT(!src.pieces.empty(), "no source for virtual ", where);
    const int64_t ndim = static_cast<int64_t>(src.pieces[0].shape.size());
    NNX_INTERNAL_ASSERT(ndim >= 1, "virtual datasets need rank >= 1: ", where);
    // The global shape: the pieces concatenated along src.dim (one piece: that piece's shape).
    std::vector<int64_t> shape = src.pieces[0].shape;
    if (src.pieces.size() > 1) {
      NNX_INTERNAL_ASSERT(src.dim >= 0 && src.dim < ndim, "bad concatenation dimension for ", where);
      shape[static_cast<size_t>(src.dim)] = 0;
      for (const auto& pc : src.pieces) {
        for (int64_t d = 0; d < ndim; ++d)
          NNX_CHECK(static_cast<int64_t>(pc.shape.size()) == ndim && (d == src.dim || pc.shape[static_cast<size_t>(d)] == shape[static_cast<size_t>(d)]),
                    "cannot stitch ", where, ": shard '", pc.file, "' holds ", format_shape(pc.shape), ", shard '",
                    src.pieces[0].file, "' holds ", format_shape(src.pieces[0].shape), " (sharded along dim ", src.dim, ")");
        shape[static_cast<size_t>(src.dim)] += pc.shape[static_cast<size_t>(src.dim)];
      }
    }
    int64_t numel = 1;
    for (auto x : shape) numel *= x;
    if (numel == 0) {  // nothing to map: an empty dataset of the global shape
      VariableState empty = vs;
      empty.value = at::empty(shape, vs.value.options().device(at::kCPU));
      write(path, empty, options);
      return;
    }
    Hid type = storage_type(vs.value.scalar_type());
    Hid vspace = dataspace(shape);
    Hid vdcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
    H5Pset_obj_track_times(vdcpl, 0);
    nlohmann::json pieces = nlohmann::json::array();
    int64_t start = 0;
    for (const auto& pc : src.pieces) {
      const int64_t extent = src.pieces.size() > 1 ? pc.shape[static_cast<size_t>(src.dim)] : 0;
      if (src.pieces.size() > 1 && extent == 0) continue;
      std::vector<hsize_t> off(static_cast<size_t>(ndim), 0), count(pc.shape.begin(), pc.shape.end());
      if (src.pieces.size() > 1) off[static_cast<size_t>(src.dim)] = static_cast<hsize_t>(start);
      Hid sspace = dataspace(pc.shape);
      H5Sselect_all(sspace);
      H5Sselect_hyperslab(vspace, H5S_SELECT_SET, off.data(), nullptr, count.data(), nullptr);
      NNX_CHECK_IO(H5Pset_virtual(vdcpl, vspace, pc.file.c_str(), ("/" + item + "/" + path).c_str(), sspace) >= 0,
                   "cannot map ", where, " onto ", pc.file);
      pieces.push_back({{"file", pc.file}, {"start", start}, {"size", extent}, {"checksum", pc.checksum}});
      start += extent;
    }
    H5Sselect_all(vspace);
    Hid dset(H5Dcreate2(group, path.c_str(), type, vspace, lcpl, vdcpl, H5P_DEFAULT), H5Dclose);
    NNX_CHECK_IO(dset.ok(), "cannot create virtual ", where);
    const bool stitched = src.pieces.size() > 1;
    attrs(dset, where, vs, dtype_name(vs.value.scalar_type()), shape, stitched ? std::string() : src.pieces[0].checksum);
    if (stitched)
      write_string_attr(dset, "pieces", nlohmann::json{{"dim", src.dim}, {"pieces", pieces}}.dump(), where);
    paths.push_back(path);
  }

  void finish() { write_string_attr(group, "nnx_paths", paths.dump(), "'" + file_path + "' group /" + item); }
};

}  // namespace

void write_state(H5File& file, const std::string& item, const State& state, const WriteOptions& options) {
  silence_hdf5();
  ItemWriter w(file, item);
  for (const auto& [path, vs] : state) w.write(path, vs, options);
  w.finish();
}

void write_state_virtual(H5File& file, const std::string& item, const State& state,
                         const std::map<std::string, VirtualSource>& sources, const WriteOptions& options) {
  silence_hdf5();
  ItemWriter w(file, item);
  for (const auto& [path, vs] : state) {
    auto it = sources.find(path);
    if (it == sources.end()) {
      w.write(path, vs, options);
    } else {
      w.write_virtual(path, vs, it->second, options);
    }
  }
  w.finish();
}

namespace {

struct StoredPiece {
  int64_t start = 0, size = 0;
  std::string checksum;
};

struct StoredInfo {
  std::string kind, dtype, checksum, sharding;
  std::vector<int64_t> shape;
  Metadata metadata;
  int64_t piece_dim = -1;            // a stitched dataset: the concatenation dimension
  std::vector<StoredPiece> pieces;   // ... and its pieces, each with its own checksum
};

StoredInfo read_info(hid_t dset, const std::string& where) {
  StoredInfo s;
  const auto names = attribute_names(dset, where);
  auto read_string_attr = [&](hid_t obj, const char* name, const std::string& w) -> std::optional<std::string> {
    if (!names.count(name)) return std::nullopt;
    return read_present_string_attr(obj, name, w);
  };
  auto need = [&](const char* name) {
    auto v = read_string_attr(dset, name, where);
    NNX_CHECK(v.has_value(), where, " lacks the attribute '", name, "' (not written by nnx-cpp?)");
    return *v;
  };
  s.kind = need("nnx_kind");
  s.dtype = need("dtype");
  s.checksum = need("checksum");
  s.sharding = read_string_attr(dset, "sharding", where).value_or("");
  NNX_CHECK(names.count("shape"), where, " lacks the attribute 'shape'");
  auto shape = read_i64_array_attr(dset, "shape", where, true);
  s.shape = *shape;
  if (auto pieces = read_string_attr(dset, "pieces", where)) {
    auto j = nlohmann::json::parse(*pieces, nullptr, false);
    bool ok = !j.is_discarded() && j.is_object() && j.contains("dim") && j["dim"].is_number_integer() &&
              j.contains("pieces") && j["pieces"].is_array();
    int64_t next = 0;
    if (ok) {
      s.piece_dim = j["dim"].get<int64_t>();
      ok = s.piece_dim >= 0 && s.piece_dim < static_cast<int64_t>(s.shape.size());
      for (const auto& p : j["pieces"]) {
        if (!ok) break;
        auto integer = [&](const char* k) { return p.contains(k) && p[k].is_number_integer() ? p[k].get<int64_t>() : int64_t(-1); };
        ok = p.is_object() && integer("start") == next && integer("size") > 0 && p.contains("checksum") &&
             p["checksum"].is_string();
        if (ok) {
          s.pieces.push_back({next, p["size"].get<int64_t>(), p["checksum"].get<std::string>()});
          next += s.pieces.back().size;
        }
      }
      ok = ok && next == s.shape[static_cast<size_t>(s.piece_dim)];
    }
    NNX_CHECK(ok, where, " has a malformed 'pieces' attribute (expected {\"dim\", \"pieces\": [{\"start\", \"size\", \"checksum\"}]} covering dimension ",
              s.piece_dim, " of ", format_shape(s.shape), ")");
  }
  auto meta = read_string_attr(dset, "metadata", where);
  if (meta) {
    auto j = nlohmann::json::parse(*meta, nullptr, false);
    NNX_CHECK(!j.is_discarded() && j.is_object(), where, " has malformed 'metadata' JSON");
    for (auto it = j.begin(); it != j.end(); ++it)
      s.metadata[it.key()] = it.value().is_string() ? it.value().get<std::string>() : it.value().dump();
  }
  return s;
}

// Elements [start, start + size) along `dim` of a dataset.
struct Range {
  int64_t dim = 0, start = 0, size = 0;
};

// Reads into `t` (contiguous) the hyperslab of `dset` that starts at `lo` along `dim` (dim < 0:
// the whole dataset) and has t's shape, in calls of at most 1 GiB along dim 0.
void read_hyperslab(hid_t dset, hid_t mtype, const at::Tensor& t, int64_t dim, int64_t lo, const std::string& where) {
  if (dim < 0) return dataset_io(false, dset, mtype, t, int64_t(1) << 30, where);
  const int64_t nbytes = t.numel() * t.element_size();
  if (nbytes == 0) return;
  const int64_t rows = t.size(0), per = rows_per_slab(t, int64_t(1) << 30), row_bytes = nbytes / rows;
  Hid fspace(H5Dget_space(dset), H5Sclose);
  for (int64_t r0 = 0; r0 < rows; r0 += per) {
    const int64_t r1 = std::min(rows, r0 + per);
    std::vector<hsize_t> start(static_cast<size_t>(t.dim()), 0), count(t.sizes().begin(), t.sizes().end());
    start[static_cast<size_t>(dim)] = static_cast<hsize_t>(lo);
    start[0] += static_cast<hsize_t>(r0);
    count[0] = static_cast<hsize_t>(r1 - r0);
    H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr);
    Hid mspace(H5Screate_simple(static_cast<int>(count.size()), count.data(), nullptr), H5Sclose);
    NNX_CHECK(H5Dread(dset, mtype, mspace, fspace, H5P_DEFAULT, static_cast<char*>(t.data_ptr()) + r0 * row_bytes) >= 0,
              "cannot read ", where, " (file truncated or corrupt?)");
  }
}

void check_sum(const at::Tensor& t, const std::string& expected, const std::string& where, ReadPipeline* pipeline) {
  if (pipeline) return pipeline->check(t, expected, where);
  check_sum_now(t, expected, where);
}

// A virtual dataset (a multi-rank checkpoint's checkpoint.h5) whose mappings are whole row
// blocks of contiguous source datasets in exactly the memory type is read piece by piece with
// pread() from the source files, each piece verified against its checksum (the dataset's own
// for a single piece, the `pieces` entry for a dim-0 stitched one). Returns false, having
// submitted nothing, when any mapping does not qualify; the caller then uses H5Dread.
bool read_virtual_direct(hid_t dset, hid_t mtype, const at::Tensor& t, const StoredInfo& info, const std::string& where,
                         ReadPipeline& pipeline) {
  if (t.dim() == 0 || t.size(0) == 0) return false;
  Hid dcpl(H5Dget_create_plist(dset), H5Pclose);
  size_t count = 0;
  if (!dcpl.ok() || H5Pget_layout(dcpl) != H5D_VIRTUAL || H5Pget_virtual_count(dcpl, &count) < 0 || count == 0) return false;
  const bool stitched = !info.pieces.empty();
  if (stitched && info.piece_dim != 0) return false;
  const int64_t rows = t.size(0), row_elems = t.numel() / rows, row_bytes = row_elems * static_cast<int64_t>(t.element_size());
  struct Plan {
    int64_t start, rows;
    int fd;
    haddr_t offset;
    std::string expected, where;
  };
  std::vector<Plan> plans;
  auto name_of = [&](auto get, size_t i) {
    ssize_t n = get(dcpl, i, nullptr, 0);
    std::string out(n > 0 ? static_cast<size_t>(n) + 1 : 0, '\0');
    if (n > 0) get(dcpl, i, out.data(), out.size());
    out.resize(n > 0 ? static_cast<size_t>(n) : 0);
    return out;
  };
  for (size_t i = 0; i < count; ++i) {
    Hid vspace(H5Pget_virtual_vspace(dcpl, i), H5Sclose);
    if (!vspace.ok() || H5Sget_select_type(vspace) != H5S_SEL_HYPERSLABS || H5Sget_select_hyper_nblocks(vspace) != 1) return false;
    const int nd = H5Sget_simple_extent_ndims(vspace);
    if (nd != t.dim()) return false;
    std::vector<hsize_t> lo(static_cast<size_t>(nd)), hi(static_cast<size_t>(nd));
    if (H5Sget_select_bounds(vspace, lo.data(), hi.data()) < 0) return false;
    for (int d = 1; d < nd; ++d)
      if (lo[d] != 0 || static_cast<int64_t>(hi[d]) + 1 != t.size(d)) return false;  // whole rows only
    const int64_t start = static_cast<int64_t>(lo[0]), n = static_cast<int64_t>(hi[0] - lo[0]) + 1;
    const std::string file = name_of(H5Pget_virtual_filename, i), name = name_of(H5Pget_virtual_dsetname, i);
    if (file.empty() || name.empty()) return false;
    const auto src = pipeline.source(file);
    if (src.fd < 0) return false;
    Hid sd(H5Dopen2(src.file, name.c_str(), H5P_DEFAULT), H5Dclose);
    if (!sd.ok()) return false;
    Hid stype(H5Dget_type(sd), H5Tclose), sspace(H5Dget_space(sd), H5Sclose);
    const haddr_t offset = H5Dget_offset(sd);
    const hsize_t bytes = static_cast<hsize_t>(n * row_bytes);
    if (H5Tequal(stype, mtype) <= 0 || offset == HADDR_UNDEF || H5Dget_storage_size(sd) != bytes ||
        H5Sget_simple_extent_npoints(sspace) != n * row_elems)
      return false;
    std::string expected, piece_where = where;
    if (stitched) {
      auto p = std::find_if(info.pieces.begin(), info.pieces.end(), [&](const auto& pc) { return pc.start == start && pc.size == n; });
      if (p == info.pieces.end()) return false;
      expected = p->checksum;
      piece_where += " (piece at " + std::to_string(start) + " along dim 0)";
    } else {
      if (count != 1 || start != 0 || n != rows) return false;
      expected = info.checksum;
    }
    plans.push_back({start, n, src.fd, offset, expected, piece_where});
  }
  // The pieces must tile the rows exactly.
  std::sort(plans.begin(), plans.end(), [](const Plan& a, const Plan& b) { return a.start < b.start; });
  int64_t next = 0;
  for (const auto& p : plans) {
    if (p.start != next) return false;
    next += p.rows;
  }
  if (next != rows) return false;
  for (auto& p : plans) pipeline.read_at(t.narrow(0, p.start, p.rows), p.fd, p.offset, p.expected, p.where);
  return true;
}

// Reads a dataset, or with `range` only those elements. Every byte read is verified: against the
// dataset's checksum, or for a stitched dataset against each piece read (a range is widened to
// whole pieces so that their checksums can be checked).
at::Tensor read_dataset(hid_t dset, const StoredInfo& info, const std::string& where, bool verify,
                        ReadPipeline* pipeline = nullptr, std::optional<Range> range = std::nullopt) {
  at::ScalarType dt = dtype_from_name(info.dtype);
  // The dataspace and type must agree with the attributes before any byte is read.
  Hid space(H5Dget_space(dset), H5Sclose);
  int rank = H5Sget_simple_extent_ndims(space);
  NNX_CHECK(rank == static_cast<int>(info.shape.size()), where, ": dataspace has rank ", rank,
            ", attribute 'shape' has ", info.shape.size());
  std::vector<hsize_t> dims(static_cast<size_t>(std::max(rank, 0)));
  if (rank > 0) H5Sget_simple_extent_dims(space, dims.data(), nullptr);
  for (int i = 0; i < rank; ++i)
    NNX_CHECK(static_cast<int64_t>(dims[i]) == info.shape[i], where, ": dataspace dims differ from attribute 'shape'");
  Hid ftype(H5Dget_type(dset), H5Tclose);
  Hid mtype = storage_type(dt);
  NNX_CHECK(H5Tget_size(ftype) == H5Tget_size(mtype) && H5Tget_class(ftype) == H5Tget_class(mtype),
            where, ": stored HDF5 type does not match dtype '", info.dtype, "'");
  if (range && range->size == 0) {  // this rank holds no rows
    std::vector<int64_t> shape = info.shape;
    shape[static_cast<size_t>(range->dim)] = 0;
    return at::empty(shape, at::TensorOptions().dtype(dt));
  }
  const bool stitched = !info.pieces.empty();
  // What to read: [lo, hi) along `dim` (the whole dataset when dim < 0).
  int64_t dim = -1, lo = 0, hi = 0;
  if (range && !(range->start == 0 && range->size == info.shape[static_cast<size_t>(range->dim)])) {
    dim = range->dim;
    if (stitched && info.piece_dim == dim) {
      lo = range->start;
      hi = range->start + range->size;
      for (const auto& p : info.pieces)
        if (range->size > 0 && p.start < range->start + range->size && p.start + p.size > range->start) {
          lo = std::min(lo, p.start);
          hi = std::max(hi, p.start + p.size);
        }
    } else {  // one checksum covers the whole dataset (or pieces along another dim): read it all
      lo = 0;
      hi = info.shape[static_cast<size_t>(dim)];
    }
  }
  std::vector<int64_t> shape = info.shape;
  if (dim >= 0) shape[static_cast<size_t>(dim)] = hi - lo;
  at::Tensor t = at::empty(shape, at::TensorOptions().dtype(dt));
  // A whole, large dataset stored contiguously in this file (no filters, no external or
  // virtual storage) in exactly the memory type is read with pread() at its offset on the
  // pipeline's reader thread, while this thread opens the next dataset.
  const int64_t nbytes = t.numel() * t.element_size();
  if (pipeline && pipeline->direct() && dim < 0 && nbytes >= kLargeDataset && H5Tequal(ftype, mtype) > 0) {
    // HADDR_UNDEF for chunked, compact, virtual and external storage; the storage size rules
    // out a contiguous dataset whose space was never allocated (in a file with a userblock
    // H5Dget_offset would then return a wrapped address).
    const haddr_t offset = stitched ? HADDR_UNDEF : H5Dget_offset(dset);
    if (offset != HADDR_UNDEF && H5Dget_storage_size(dset) == static_cast<hsize_t>(nbytes)) {
      pipeline->read_at(t, offset, info.checksum, where);
      return t;
    }
    if (offset == HADDR_UNDEF && read_virtual_direct(dset, mtype, t, info, where, *pipeline)) return t;
  }
  if (pipeline) pipeline->count(false, nbytes);
  read_hyperslab(dset, mtype, t, dim, lo, where);
  if (verify && stitched) {
    for (const auto& p : info.pieces) {
      if (dim == info.piece_dim && (p.start < lo || p.start + p.size > hi)) continue;  // not read
      const int64_t origin = dim == info.piece_dim ? lo : 0;
      check_sum(t.narrow(info.piece_dim, p.start - origin, p.size).contiguous(), p.checksum,
                where + " (piece at " + std::to_string(p.start) + " along dim " + std::to_string(info.piece_dim) + ")", pipeline);
    }
  } else if (verify) {
    check_sum(t, info.checksum, where, pipeline);
  }
  if (dim < 0) return t;
  return t.narrow(dim, range->start - lo, range->size).clone();
}

std::vector<std::string> stored_paths(const H5File& file, hid_t group, const std::string& item) {
  auto s = read_string_attr(group, "nnx_paths", "'" + file.path() + "' group /" + item);
  NNX_CHECK(s.has_value(), "'", file.path(), "' group /", item, " lacks its 'nnx_paths' attribute");
  auto j = nlohmann::json::parse(*s, nullptr, false);
  NNX_CHECK(!j.is_discarded() && j.is_array(), "'", file.path(), "' group /", item, " has malformed 'nnx_paths'");
  return j.get<std::vector<std::string>>();
}

Hid open_item(const H5File& file, const std::string& item) {
  NNX_CHECK(H5Lexists(file.id(), ("/" + item).c_str(), H5P_DEFAULT) > 0, "'", file.path(),
            "' has no item '", item, "'");
  Hid group(H5Gopen2(file.id(), ("/" + item).c_str(), H5P_DEFAULT), H5Gclose);
  NNX_CHECK(group.ok(), "cannot open item '", item, "' in '", file.path(), "'");
  return group;
}

}  // namespace

State read_state(const H5File& file, const std::string& item, const State& templ, const ReadOptions& options) {
  silence_hdf5();
  Hid group = open_item(file, item);
  auto in_file = stored_paths(file, group, item);
  std::unordered_set<std::string> file_set(in_file.begin(), in_file.end());
  State out;
  ReadPipeline pipeline(file, options.verify_checksums, options.stats);
  for (const auto& [path, tv] : templ) {
    if (!options.filter(path, tv.kind)) continue;
    const std::string where = where_of(file, item, path);
    const bool listed = file_set.count(path) > 0;
    Hid dset(listed ? H5Dopen2(group, path.c_str(), H5P_DEFAULT) : -1, H5Dclose);
    // Missing (not listed, or listed but absent) vs present but unreadable (a corrupt header).
    NNX_CHECK(dset.ok() || (listed && link_exists(group, path)), "checkpoint '", file.path(), "' item '", item,
              "' has no '", path, "' (template expects ", format_shape(tv.value.sizes()), " ",
              dtype_name(tv.value.scalar_type()), ")");
    NNX_CHECK(dset.ok(), "cannot open ", where, " (corrupt object header?)");
    StoredInfo info = read_info(dset, where);
    // A template variable sharded over the 'data' mesh reads this rank's shard of the global array.
    PartitionSpec spec;
    try {
      spec = get_partition_spec(tv.metadata);
      spec.check_rank(tv.value.dim(), "template");
    } catch (const Error& e) {
      NNX_CHECK(false, "template '", path, "' (", where, "): ", e.what());
    }
    NNX_CHECK(spec.replicated() || tv.value.dim() == static_cast<int64_t>(info.shape.size()), "shape mismatch at '", path,
              "': checkpoint ", format_shape(info.shape), ", template ", format_shape(tv.value.sizes()), " (", where, ")");
    std::optional<Range> range;
    if (!spec.replicated()) {
      const Mesh mesh = options.mesh.value_or(Mesh{});
      auto r = shard_range(info.shape[static_cast<size_t>(spec.sharded_dim())], mesh.rank, mesh.size);
      range = Range{spec.sharded_dim(), r.start, r.size};
      auto want = shard_shape(info.shape, spec, mesh);
      NNX_CHECK(want == tv.value.sizes().vec(), "shape mismatch at '", path, "': checkpoint ", format_shape(info.shape),
                ", whose shard ", mesh.rank, " of ", mesh.size, " along dim ", spec.sharded_dim(), " is ",
                format_shape(want), ", template ", format_shape(tv.value.sizes()), " (", where, ")");
    } else {
      NNX_CHECK(info.shape == tv.value.sizes().vec(), "shape mismatch at '", path, "': checkpoint ",
                format_shape(info.shape), ", template ", format_shape(tv.value.sizes()), " (", where, ")");
    }
    at::ScalarType want = tv.value.scalar_type();
    at::ScalarType have = dtype_from_name(info.dtype);
    NNX_CHECK(have == want || options.cast, "dtype mismatch at '", path, "': checkpoint ", info.dtype,
              ", template ", dtype_name(want), " (", where, "; pass cast=true to convert)");
    at::Tensor t = read_dataset(dset, info, where, options.verify_checksums, &pipeline, range);
    // The restored variable is sharded as the template says, whatever wrote the checkpoint.
    Metadata meta = info.metadata;
    if (spec.replicated()) meta.erase(kShardingKey);
    else meta[kShardingKey] = spec.to_string();
    out.insert(path, VariableState{Kind::from_name(info.kind), t, std::move(meta)});
  }
  pipeline.finish();  // every byte read and every checksum checked before any conversion or copy
  for (auto& [path, vs] : out) {
    const auto& tv = templ.at(path);
    if (vs.value.scalar_type() != tv.value.scalar_type()) vs.value = vs.value.to(tv.value.scalar_type());
    c10::Device dev = options.device ? *options.device
                                     : (tv.value.is_meta() ? c10::Device(c10::kCPU) : tv.value.device());
    if (!dev.is_cpu()) vs.value = vs.value.to(dev);
  }
  if (!options.allow_extra) {
    for (const auto& p : in_file) {
      if (templ.contains(p)) continue;
      // Partial restores ignore what their filter excludes; the kind is read for the filter.
      Hid dset(H5Dopen2(group, p.c_str(), H5P_DEFAULT), H5Dclose);
      auto kind = dset.ok() ? read_string_attr(dset, "nnx_kind", p) : std::nullopt;
      bool selected = !kind || options.filter(p, Kind::define(*kind));
      NNX_CHECK(!selected, "checkpoint '", file.path(), "' item '", item, "' has '", p,
                "' which the template lacks (unexpected path; restore with allow_extra to ignore it)");
    }
  }
  return out;
}

State read_state_untemplated(const H5File& file, const std::string& item, bool verify) {
  silence_hdf5();
  Hid group = open_item(file, item);
  State out;
  for (const auto& path : stored_paths(file, group, item)) {
    const std::string where = where_of(file, item, path);
    NNX_CHECK(link_exists(group, path), where, " is listed but missing");
    Hid dset(H5Dopen2(group, path.c_str(), H5P_DEFAULT), H5Dclose);
    NNX_CHECK(dset.ok(), "cannot open ", where);
    StoredInfo info = read_info(dset, where);
    out.insert(path, VariableState{Kind::define(info.kind), read_dataset(dset, info, where, verify), info.metadata});
  }
  return out;
}

std::vector<DatasetInfo> list_item(const H5File& file, const std::string& item) {
  silence_hdf5();
  Hid group = open_item(file, item);
  std::vector<DatasetInfo> out;
  for (const auto& path : stored_paths(file, group, item)) {
    const std::string where = where_of(file, item, path);
    NNX_CHECK(link_exists(group, path), where, " is listed but missing");
    Hid dset(H5Dopen2(group, path.c_str(), H5P_DEFAULT), H5Dclose);
    StoredInfo info = read_info(dset, where);
    DatasetInfo d;
    d.path = path;
    d.kind = info.kind;
    d.dtype = info.dtype;
    d.shape = info.shape;
    d.sharding = info.sharding;
    d.checksum = info.checksum;
    int64_t n = 1;
    for (auto s : info.shape) n *= s;
    d.nbytes = n * static_cast<int64_t>(c10::elementSize(dtype_from_name(info.dtype)));
    out.push_back(d);
  }
  return out;
}

namespace {
std::vector<std::string> group_children(hid_t loc) {
  std::vector<std::string> names;
  H5Literate(loc, H5_INDEX_NAME, H5_ITER_INC, nullptr,
              [](hid_t, const char* name, const H5L_info_t*, void* data) -> herr_t {
                static_cast<std::vector<std::string>*>(data)->push_back(name);
                return 0;
              },
              &names);
  return names;
}
}  // namespace

std::vector<std::string> list_items(const H5File& file) {
  silence_hdf5();
  std::vector<std::string> out;
  for (auto& n : group_children(file.id()))
    if (n != "json") out.push_back(n);
  return out;
}

std::vector<std::string> list_json_items(const H5File& file) {
  silence_hdf5();
  if (H5Lexists(file.id(), "/json", H5P_DEFAULT) <= 0) return {};
  Hid g(H5Gopen2(file.id(), "/json", H5P_DEFAULT), H5Gclose);
  return group_children(g);
}

void write_json(H5File& file, const std::string& item, const nlohmann::json& value) {
  silence_hdf5();
  Hid lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  H5Pset_create_intermediate_group(lcpl, 1);
  Hid type = vlen_string_type();
  Hid space(H5Screate(H5S_SCALAR), H5Sclose);
  const std::string name = "/json/" + item;
  Hid dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  H5Pset_obj_track_times(dcpl, 0);
  Hid dset(H5Dcreate2(file.id(), name.c_str(), type, space, lcpl, dcpl, H5P_DEFAULT), H5Dclose);
  NNX_CHECK_IO(dset.ok(), "cannot create ", name, " in '", file.path(), "'");
  std::string s = value.dump();
  const char* p = s.c_str();
  NNX_CHECK_IO(H5Dwrite(dset, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, &p) >= 0, "cannot write ", name,
               " in '", file.path(), "'");
  write_string_attr(dset, "checksum", checksum_bytes(s.data(), s.size()), name);
}

nlohmann::json read_json(const H5File& file, const std::string& item) {
  silence_hdf5();
  const std::string name = "/json/" + item;
  NNX_CHECK(link_exists(file.id(), name.substr(1)), "'", file.path(), "' has no JSON item '", item, "'");
  Hid dset(H5Dopen2(file.id(), name.c_str(), H5P_DEFAULT), H5Dclose);
  Hid type = vlen_string_type();
  char* p = nullptr;
  NNX_CHECK(H5Dread(dset, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, &p) >= 0, "cannot read ", name, " in '",
            file.path(), "'");
  std::string s = p ? p : "";
  if (p) H5free_memory(p);
  auto sum = read_string_attr(dset, "checksum", name);
  NNX_CHECK(!sum || *sum == checksum_bytes(s.data(), s.size()), "'", file.path(), "' ", name,
            ": checksum mismatch; the checkpoint is corrupt");
  auto j = nlohmann::json::parse(s, nullptr, false);
  NNX_CHECK(!j.is_discarded(), "'", file.path(), "' ", name, " is not valid JSON");
  return j;
}

}  // namespace nnx::checkpoint
