#include "nnx/checkpoint/format/h5_handles.h"
#include "nnx/checkpoint/format/json_item.h"
#include "nnx/checkpoint/format/state_reader.h"
#include "nnx/checkpoint/format/state_writer.h"
#include "nnx/checkpoint/io/checksum.h"
#include "nnx/checkpoint/io/io_stats.h"
#include "nnx/checkpoint/shard_planner.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <hdf5.h>
#include <unistd.h>
#include <sys/mman.h>
#include <fcntl.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "nnx/framework/error.h"
#include "test_util.h"
#include "tools/run_util.h"

using namespace nnx;
using namespace nnx::checkpoint;

namespace {
// Two float32 ones: how a dataset of 1.0f values is found in a file's bytes.
const std::string kOnes("\x00\x00\x80\x3f\x00\x00\x80\x3f", 8);

// Flips one byte of `path`, `offset` bytes after the first occurrence of `pattern` at or after
// byte `from`, and returns where the pattern starts (throws when it is not there).
size_t flip_byte_after(const std::string& path, const std::string& pattern, size_t offset, size_t from = 0) {
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  const size_t pos = bytes.find(pattern, from);
  if (pos == std::string::npos || pos + offset >= bytes.size())
    throw std::runtime_error("'" + path + "' lacks the pattern to corrupt");
  bytes[pos + offset] ^= 0x01;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
  return pos;
}

// read_state of /<item> with `o`, and how it read each dataset.
std::pair<State, io::IoStats> read_counted(const H5File& f, const std::string& item, const State& templ, ReadOptions o = {}) {
  io::IoStatsScope scope;
  State out = read_state(f, item, templ, o);
  return {std::move(out), scope.stats()};
}

State every_dtype() {
  State s;
  s.insert("f64", {Param, at::randn({3, 2}, at::kDouble), {}});
  s.insert("f32", {Param, at::randn({4}), {{"sharding", "[\"data\"]"}, {"note", "x"}}});
  s.insert("f16", {Param, at::randn({5}).to(at::kHalf), {}});
  s.insert("bf16", {Param, at::randn({2, 3}).to(at::kBFloat16), {}});
  s.insert("i64", {RngCount, at::scalar_tensor(int64_t(1) << 40, at::kLong), {}});
  s.insert("i32", {Cache, at::arange(6, at::kInt), {}});
  s.insert("i16", {Cache, at::arange(6, at::kShort), {}});
  s.insert("i8", {Cache, at::arange(-3, 3, at::kChar), {}});
  s.insert("u8", {Cache, at::arange(250, 256).to(at::kByte), {}});
  s.insert("bool", {Cache, at::tensor({1, 0, 1}).to(at::kBool), {}});
  s.insert("empty", {Param, at::empty({0, 3}), {}});
  s.insert("scalar", {Param, at::scalar_tensor(2.5), {}});
  s.insert("deep/nested/path/x", {BatchStat, at::ones({2, 2, 2}), {}});
  return s;
}
}  // namespace

TEST(Hdf5Io, RoundTripsEveryDtypeAndShapeClass) {
  test::TempDir dir;
  State s = every_dtype();
  {
    H5File f = H5File::create((dir / "a.h5").string());
    io::PendingWrites pending = write_state(f, "params", s);
    f.close(std::move(pending));
  }
  H5File f = H5File::open((dir / "a.h5").string());
  State back = read_state(f, "params", s);
  EXPECT_TRUE(back.equal(s)) << back.first_difference(s);
  EXPECT_EQ(back.at("f32").metadata.at("sharding"), "[\"data\"]");
  EXPECT_EQ(back.at("f32").metadata.at("note"), "x");
  EXPECT_EQ(back.at("i64").kind, RngCount);
  State untemplated = read_state_untemplated(f, "params");
  EXPECT_TRUE(untemplated.equal(s));
  auto infos = list_item(f, "params");
  EXPECT_EQ(infos.size(), s.size());
  EXPECT_EQ(infos[3].dtype, "bfloat16");
  EXPECT_EQ(infos[3].nbytes, 12);
}

TEST(Hdf5Io, ViewsWriteOnlyTheirElementsAndSlabsSplitLargeTensors) {
  test::TempDir dir;
  at::Tensor base = at::arange(1000, at::kFloat).reshape({100, 10});
  State s;
  s.insert("view", {Param, base.slice(0, 10, 20).t(), {}});  // non-contiguous [10, 10]
  s.insert("big", {Param, at::randn({64, 33}), {}});
  WriteOptions wo;
  wo.max_write_bytes = 1000;  // forces many slabs
  {
    H5File f = H5File::create((dir / "v.h5").string());
    io::PendingWrites pending = write_state(f, "p", s, wo);
    f.close(std::move(pending));
  }
  H5File f = H5File::open((dir / "v.h5").string());
  auto infos = list_item(f, "p");
  EXPECT_EQ(infos[0].nbytes, 400);  // the view's 100 elements, not the base's 1000
  EXPECT_TRUE(read_state(f, "p", s).equal(s));
}

TEST(Hdf5Io, TemplateMismatchesNamePathAndBothValues) {
  test::TempDir dir;
  State s;
  s.insert("fc/kernel", {Param, at::zeros({2, 3}), {}});
  s.insert("fc/bias", {Param, at::zeros({3}), {}});
  {
    H5File f = H5File::create((dir / "t.h5").string());
    io::PendingWrites pending = write_state(f, "params", s);
    f.close(std::move(pending));
  }
  H5File f = H5File::open((dir / "t.h5").string());
  auto expect_error = [&](const State& templ, std::vector<std::string> needles, ReadOptions o = {}) {
    try {
      read_state(f, "params", templ, o);
      FAIL() << "no error";
    } catch (const Error& e) {
      for (auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what() << " / " << n;
    }
  };
  State shape = s;
  shape.at("fc/kernel").value = at::zeros({3, 2});
  expect_error(shape, {"fc/kernel", "[2, 3]", "[3, 2]"});
  State dtype = s;
  dtype.at("fc/bias").value = at::zeros({3}, at::kDouble);
  expect_error(dtype, {"fc/bias", "float32", "float64"});
  ReadOptions cast;
  cast.cast = true;
  EXPECT_EQ(read_state(f, "params", dtype, cast).at("fc/bias").value.scalar_type(), at::kDouble);
  State missing = s;
  missing.insert("fc/scale", {Param, at::zeros({3}), {}});
  expect_error(missing, {"fc/scale", "has no"});
  State fewer;
  fewer.insert("fc/kernel", {Param, at::zeros({2, 3}), {}});
  expect_error(fewer, {"fc/bias", "unexpected"});
  // Partial restore by filter, or tolerating extras.
  ReadOptions partial;
  partial.filter = PathContains("kernel");
  EXPECT_EQ(read_state(f, "params", s, partial).paths(), (std::vector<std::string>{"fc/kernel"}));
  EXPECT_EQ(read_state(f, "params", fewer, partial).size(), 1u);
  try {
    read_state(f, "opt", s);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no item 'opt'"), std::string::npos) << e.what();
  }
}

TEST(Hdf5Io, ChecksumDetectsFlippedBytes) {
  test::TempDir dir;
  State s;
  s.insert("w", {Param, at::full({4096}, 1.0f), {}});
  const auto path = (dir / "c.h5").string();
  {
    H5File f = H5File::create(path);
    io::PendingWrites pending = write_state(f, "params", s);
    f.close(std::move(pending));
  }
  flip_byte_after(path, kOnes, 2000);  // one byte inside the data
  H5File f = H5File::open(path);
  try {
    read_state(f, "params", s);
    FAIL();
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("checksum mismatch"), std::string::npos) << m;
    EXPECT_NE(m.find("/params/w"), std::string::npos) << m;
  }
}

TEST(Hdf5Io, JsonItemsRoundTrip) {
  test::TempDir dir;
  nlohmann::json j = {{"model", {{"width", 3}}}, {"name", "ünïcode"}};
  {
    H5File f = H5File::create((dir / "j.h5").string());
    write_json(f, "config", j);
    f.close();
  }
  H5File f = H5File::open((dir / "j.h5").string());
  EXPECT_EQ(read_json(f, "config"), j);
  EXPECT_EQ(list_json_items(f), (std::vector<std::string>{"config"}));
  EXPECT_THROW(read_json(f, "other"), Error);
  EXPECT_THROW(H5File::open((dir / "none.h5").string()), Error);
}

namespace {
// Writes the shards of `global` (sharded as `spec` over `n` ranks) into shard-<r>-of-<n>.h5 and
// a checkpoint.h5 stitching them, as a distributed save does. Returns checkpoint.h5's path.
std::string write_stitched(const std::filesystem::path& dir, const at::Tensor& global, const PartitionSpec& spec, int n) {
  VirtualSource src;
  src.dim = spec.sharded_dim();
  for (int r = 0; r < n; ++r) {
    const std::string name = "shard-" + std::to_string(r) + "-of-" + std::to_string(n) + ".h5";
    State mine;
    mine.insert("w", {OptState, shard_of(global, spec, Mesh{r, n}).clone(), {{kShardingKey, spec.to_string()}}});
    H5File f = H5File::create((dir / name).string());
    io::PendingWrites pending = write_state(f, "opt", mine);
    auto info = list_item(f, "opt");
    src.pieces.push_back({name, info[0].checksum, info[0].shape});
    f.close(std::move(pending));
  }
  State local;
  local.insert("w", {OptState, shard_of(global, spec, Mesh{0, n}), {{kShardingKey, spec.to_string()}}});
  const auto path = (dir / "checkpoint.h5").string();
  H5File f = H5File::create(path);
  io::PendingWrites pending = write_state_virtual(f, "opt", local, {{"w", src}});
  f.close(std::move(pending));
  return path;
}
State sharded_template(const std::vector<int64_t>& global, const PartitionSpec& spec, const Mesh& mesh) {
  State t;
  t.insert("w", {OptState, at::empty(shard_shape(global, spec, mesh), at::TensorOptions().device(at::kMeta)),
                 spec.replicated() ? Metadata{} : Metadata{{kShardingKey, spec.to_string()}}});
  return t;
}
}  // namespace

TEST(Hdf5Io, ShardsStitchIntoGlobalArraysAndRestoreAtAnyWorldSize) {
  const at::Tensor global = at::arange(10 * 7, at::kFloat).view({10, 7});
  for (int64_t dim : {0, 1}) {
    for (int saved_n : {1, 3, 4}) {
      test::TempDir dir;
      const auto spec = PartitionSpec::sharded(dim, 2);
      H5File f = H5File::open(write_stitched(dir.path(), global, spec, saved_n));
      // The global array, whatever wrote it; the spec and the pieces are recorded.
      State whole = read_state(f, "opt", sharded_template({10, 7}, PartitionSpec(), {}));
      EXPECT_TRUE(at::equal(whole.at("w").value, global)) << "dim " << dim << " n " << saved_n;
      EXPECT_EQ(whole.at("w").metadata.count(kShardingKey), 0u);  // as the template says
      auto listed = list_item(f, "opt");
      EXPECT_EQ(listed[0].shape, (std::vector<int64_t>{10, 7}));
      EXPECT_EQ(listed[0].sharding, spec.to_string());
      // Each rank of another world size reads exactly its shard (uneven sizes included).
      for (int n : {1, 2, 3, 4, 6}) {
        std::vector<at::Tensor> parts;
        for (int r = 0; r < n; ++r) {
          ReadOptions o;
          o.mesh = Mesh{r, n};
          State got = read_state(f, "opt", sharded_template({10, 7}, spec, Mesh{r, n}), o);
          EXPECT_EQ(got.at("w").metadata.at(kShardingKey), spec.to_string());
          parts.push_back(got.at("w").value);
        }
        EXPECT_TRUE(at::equal(at::cat(parts, dim), global)) << "dim " << dim << " saved " << saved_n << " restored " << n;
      }
      // A template whose shard does not fit the stored array is an error naming both shapes.
      ReadOptions o;
      o.mesh = Mesh{0, 2};
      try {
        read_state(f, "opt", sharded_template({12, 7}, spec, Mesh{0, 2}), o);
        ADD_FAILURE();
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("shape mismatch at 'w': checkpoint [10, 7], whose shard 0 of 2"), std::string::npos) << e.what();
      }
    }
  }
}

TEST(Hdf5Io, ACorruptShardIsDetectedByTheRanksThatReadIt) {
  test::TempDir dir;
  const at::Tensor global = at::full({4096, 2}, 1.0f);
  const auto spec = PartitionSpec::sharded(0, 2);
  const auto path = write_stitched(dir.path(), global, spec, 2);
  flip_byte_after((dir / "shard-1-of-2.h5").string(), kOnes, 1000);  // a byte inside shard 1's data
  H5File f = H5File::open(path);
  ReadOptions r0;
  r0.mesh = Mesh{0, 2};
  EXPECT_NO_THROW(read_state(f, "opt", sharded_template({4096, 2}, spec, Mesh{0, 2}), r0));  // reads shard 0 only
  ReadOptions r1;  // rank 1 reads the corrupt piece
  r1.mesh = Mesh{1, 2};
  try {
    read_state(f, "opt", sharded_template({4096, 2}, spec, Mesh{1, 2}), r1);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("checksum mismatch"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("piece at 2048 along dim 0"), std::string::npos) << e.what();
  }
  EXPECT_THROW(read_state(f, "opt", sharded_template({4096, 2}, PartitionSpec(), {})), Error);  // the global read
}

// A damaged file's dataspace may claim many strings where one is stored: H5Aread/H5Dread would
// write one pointer per element into a one-pointer buffer. The readers check first.
TEST(Hdf5Io, AStringWithAnArrayDataspaceIsAClearError) {
  test::TempDir dir;
  const std::string path = (dir / "s.h5").string();
  {
    H5File f = H5File::create(path);
    write_json(f, "config", nlohmann::json{{"a", 1}});
    f.close();
  }
  {  // json/config and an attribute rewritten as arrays of two strings
    hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT_GE(f, 0);
    ASSERT_GE(H5Ldelete(f, "/json/config", H5P_DEFAULT), 0);
    h5::Hid type = h5::vlen_string_type();
    hsize_t two = 2;
    h5::Hid space(H5Screate_simple(1, &two, nullptr), H5Sclose);
    const char* values[2] = {"{\"a\": 1}", "{\"b\": 2}"};
    h5::Hid d(H5Dcreate2(f, "/json/config", type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Dclose);
    ASSERT_GE(H5Dwrite(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, values), 0);
    h5::Hid a(H5Acreate2(f, "label", type, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
    ASSERT_GE(H5Awrite(a, type, values), 0);
    H5Fclose(f);
  }
  H5File f = H5File::open(path);
  auto message_of = [](auto&& read) {
    try {
      read();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message_of([&] { read_json(f, "config"); }).find("/json/config is not a single string"), std::string::npos);
  EXPECT_NE(message_of([&] { h5::read_string_attr(f.id(), "label", "the root"); }).find("attribute 'label' of the root is not a single string"),
            std::string::npos);
}

TEST(Hdf5Io, AMalformedPiecesAttributeIsAClearError) {
  if (test::run("/usr/bin/python3 -c 'import h5py'").exit_code != 0) GTEST_SKIP() << "python3-h5py is not installed";
  test::TempDir dir;
  const auto spec = PartitionSpec::sharded(0, 2);
  const auto path = write_stitched(dir.path(), at::arange(20, at::kFloat).view({10, 2}), spec, 2);
  auto edit = test::run("cd / && /usr/bin/python3 -c \"import h5py; f=h5py.File('" + path +
                        "','r+'); f['opt/w'].attrs['pieces']='{\\\"dim\\\":0,\\\"pieces\\\":[{\\\"start\\\":\\\"x\\\"}]}'\"");
  ASSERT_EQ(edit.exit_code, 0) << edit.output;
  H5File f = H5File::open(path);
  try {
    read_state(f, "opt", sharded_template({10, 2}, PartitionSpec(), {}));
    ADD_FAILURE();
  } catch (const Error& e) {  // an nnx::Error (not a JSON library exception) that names the dataset
    EXPECT_NE(std::string(e.what()).find("/opt/w has a malformed 'pieces' attribute"), std::string::npos) << e.what();
  }
}

// Datasets of 1 MiB and more are read with pread() at their file offset on reader threads and
// hashed slice by slice; these tests cover that path for every 1- to 8-byte dtype, corruption
// in any slice, an error while reads are in flight, and the fallback to H5Dread.
TEST(Hdf5Io, LargeDatasetsRoundTripThroughTheParallelReadPath) {
  test::TempDir dir;
  State s;
  s.insert("a/f32", {Param, at::randn({300, 1000}), {}});  // 1.2 MB
  s.insert("a/f16", {Param, at::randn({700000}).to(at::kHalf), {}});
  s.insert("b/bf16", {Param, at::randn({700000}).to(at::kBFloat16), {}});
  s.insert("b/f64", {Param, at::randn({200000}, at::kDouble), {}});
  s.insert("c/i64", {Cache, at::arange(200000, at::kLong), {}});
  s.insert("c/u8", {Cache, at::randint(0, 256, {(1 << 20) + 7}).to(at::kByte), {}});
  s.insert("c/bool", {Cache, at::randint(0, 2, {(1 << 20) + 1}).to(at::kBool), {}});
  s.insert("c/i32", {Cache, at::arange(300000, at::kInt), {}});
  s.insert("c/i16", {Cache, at::arange(600000, at::kInt).to(at::kShort), {}});
  s.insert("c/i8", {Cache, at::randint(-128, 128, {(1 << 20) + 5}).to(at::kChar), {}});
  s.insert("small", {Param, at::randn({10}), {}});
  s.insert("big_view", {Param, at::randn({2000, 600}).slice(1, 100, 400), {}});  // non-contiguous source
  const auto path = (dir / "big.h5").string();
  {
    H5File f = H5File::create(path);
    io::PendingWrites pending = write_state(f, "params", s);
    f.close(std::move(pending));
  }
  H5File f = H5File::open(path);
  for (bool verify : {true, false}) {
    ReadOptions o;
    o.verify_checksums = verify;
    auto [back, stats] = read_counted(f, "params", s, o);
    EXPECT_TRUE(back.equal(s)) << back.first_difference(s);
    EXPECT_EQ(stats.direct_reads, 11);  // every dataset of 1 MiB or more
    EXPECT_EQ(stats.hdf5_reads, 1);     // "small"
  }
  // A sharded template: the whole array at world size 1 is read directly, a shard's rows at
  // world size 2 through H5Dread (a hyperslab).
  for (int n : {1, 2}) {
    State templ;
    templ.insert("a/f32", {Param, at::empty(shard_shape({300, 1000}, PartitionSpec::sharded(0, 2), Mesh{n - 1, n}),
                                            at::TensorOptions().device(at::kMeta)),
                           {{kShardingKey, PartitionSpec::sharded(0, 2).to_string()}}});
    ReadOptions o;
    o.mesh = Mesh{n - 1, n};
    o.allow_extra = true;
    auto [got, stats] = read_counted(f, "params", templ, o);
    EXPECT_TRUE(at::equal(got.at("a/f32").value, s.at("a/f32").value.narrow(0, n == 1 ? 0 : 150, n == 1 ? 300 : 150)));
    EXPECT_EQ(stats.direct_reads, n == 1 ? 1 : 0) << n;
    EXPECT_EQ(stats.hdf5_reads, n == 1 ? 0 : 1) << n;
  }
  // The reads use the descriptor HDF5 opened: renaming or replacing the path afterwards (a
  // retention delete while another process restores) changes nothing.
  std::filesystem::rename(path, path + ".moved");
  { std::ofstream(path) << "not this file"; }
  EXPECT_TRUE(read_state(f, "params", s).equal(s));
  // Large data starts on a 4 KiB boundary (H5Pset_alignment), so page-cache copies are aligned.
  for (const char* p : {"/params/a/f32", "/params/c/u8"}) {
    hid_t d = H5Dopen2(f.id(), p, H5P_DEFAULT);
    ASSERT_GE(d, 0);
    EXPECT_EQ(H5Dget_offset(d) % 4096, 0u) << p;
    H5Dclose(d);
  }
}

namespace {
// Whether `dir`'s file system takes an aligned O_DIRECT write.
bool supports_odirect(const std::filesystem::path& dir) {
  const auto probe = (dir / "odirect-probe").string();
  int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_DIRECT, 0644);
  bool ok = false;
  if (fd >= 0) {
    void* page = nullptr;
    if (::posix_memalign(&page, 4096, 4096) == 0) {
      std::memset(page, 0, 4096);
      ok = ::pwrite(fd, page, 4096, 0) == 4096;
      std::free(page);
    }
    ::close(fd);
  }
  std::filesystem::remove(probe);
  return ok;
}

// How many of the pages of `path` in [begin, end) are in the page cache (mincore).
size_t cached_pages(const std::string& path, size_t begin, size_t end) {
  int fd = ::open(path.c_str(), O_RDONLY);
  const size_t size = static_cast<size_t>(::lseek(fd, 0, SEEK_END));
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  std::vector<unsigned char> resident((size + 4095) / 4096);
  ::mincore(map, size, resident.data());
  ::munmap(map, size);
  size_t n = 0;
  for (size_t page = begin / 4096; page < end / 4096; ++page) n += resident[page] & 1;
  return n;
}
}  // namespace

// The direct write path: large datasets go to the file with O_DIRECT (page-aligned memory as
// it is, other memory through staging buffers, more slices than there are buffers), partial last
// pages through the page cache; the file checksum commit() computes from memory equals the
// checksum of the bytes read back from the disk.
TEST(Hdf5Io, LargeDatasetsAreWrittenDirectlyAndCommitHashesWhatIsOnDisk) {
  test::TempDir dir;
  const bool odirect = supports_odirect(dir.path());
  const int64_t kMiB = 1 << 20;
  // Page-aligned memory of 9 MiB + 12 bytes: three slices without staging, and a partial page.
  void* raw = nullptr;
  ASSERT_EQ(::posix_memalign(&raw, 4096, 10 * kMiB), 0);
  at::Tensor aligned = at::from_blob(raw, {(9 * kMiB + 12) / 4}, [](void* q) { std::free(q); }, at::kFloat);
  aligned.copy_(at::randn({(9 * kMiB + 12) / 4}));
  State s;
  s.insert("aligned", {Param, aligned, {}});
  // Memory 4 bytes past an allocation's start, 40 MiB + 12 bytes: ten staged slices, more than
  // the 8 staging buffers, so staging waits for writes to return them.
  s.insert("unaligned", {Param, at::randn({(40 * kMiB + 12) / 4 + 1}).narrow(0, 1, (40 * kMiB + 12) / 4), {}});
  s.insert("exact_pages", {Param, at::randn({kMiB / 4}), {}});  // 1 MiB: no partial page
  s.insert("i8_odd", {Cache, at::randint(-128, 128, {kMiB + 5}).to(at::kChar), {}});
  s.insert("bool_odd", {Cache, at::randint(0, 2, {kMiB + 1}).to(at::kBool), {}});
  s.insert("small", {Param, at::randn({10}), {}});
  s.insert("view", {Param, at::randn({1024, 1024}).t(), {}});  // a temporary contiguous copy: H5Dwrite
  ASSERT_NE(reinterpret_cast<uintptr_t>(s.at("unaligned").value.data_ptr()) % 4096, 0u);
  std::map<std::string, std::string> sums;
  for (bool direct : {true, false}) {
    const auto path = (dir / (direct ? "direct.h5" : "hdf5.h5")).string();
    WriteOptions wo;
    wo.direct_io = direct;
    io::IoStatsScope scope;
    H5File f = H5File::create(path);
    auto [size, sum] = f.commit(write_state(f, "params", s, wo));
    EXPECT_THROW(f.commit(), Error);  // once
    const io::IoStats ws = scope.stats();
    EXPECT_EQ(ws.direct_writes, direct && odirect ? 5 : 0) << direct;
    EXPECT_EQ(ws.hdf5_writes, direct && odirect ? 2 : 7) << direct;
    EXPECT_EQ(ws.bytes_written, s.nbytes());
    H5File back_file = H5File::open(path);
    if (direct && odirect) {
      // Written with O_DIRECT, not through the page cache: the middle of the 40 MiB dataset
      // (beyond any readahead of the hash's reads of neighbouring bytes) is not cached.
      hid_t d = H5Dopen2(back_file.id(), "/params/unaligned", H5P_DEFAULT);
      const size_t offset = H5Dget_offset(d);
      H5Dclose(d);
      EXPECT_EQ(offset % 4096, 0u);
      EXPECT_EQ(cached_pages(path, offset + 16 * kMiB, offset + 32 * kMiB), 0u);
    }
    // The checksum of the bytes on the disk: the file leaves the page cache and is read back.
    {
      int fd = ::open(path.c_str(), O_RDONLY);
      ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
      ::close(fd);
    }
    auto [disk_size, disk_sum] = io::file_size_and_checksum(path);
    EXPECT_EQ(size, disk_size) << direct;
    EXPECT_EQ(sum, disk_sum) << direct;
    auto [back, rs] = read_counted(back_file, "params", s);
    EXPECT_TRUE(back.equal(s)) << back.first_difference(s);
    EXPECT_EQ(rs.direct_reads, 6);
    // The dataset checksums (hashed while staging on the direct path) are the same either way.
    for (const auto& d : list_item(back_file, "params")) {
      auto [it, fresh] = sums.emplace(d.path, d.checksum);
      if (!fresh) {
        EXPECT_EQ(it->second, d.checksum) << d.path;
      }
      const at::Tensor t = s.at(d.path).value.contiguous();
      EXPECT_EQ(d.checksum, io::checksum_bytes(t.data_ptr(), static_cast<size_t>(t.numel() * t.element_size()))) << d.path;
    }
  }
  // A save that fails half-way (an abstract tensor after large ones) leaves no thread or staging
  // buffer behind: the next file stages all of its slices again.
  {
    State bad = s;
    bad.insert("zz_abstract", {Param, at::empty({4}, at::TensorOptions().device(at::kMeta)), {}});
    H5File f = H5File::create((dir / "failed.h5").string());
    EXPECT_THROW(write_state(f, "params", bad), Error);
  }
  {
    H5File f = H5File::create((dir / "after.h5").string());
    io::PendingWrites pending = write_state(f, "params", s);
    auto [size, sum] = f.commit(std::move(pending));
    EXPECT_EQ(io::file_size_and_checksum(dir / "after.h5").second, sum);
  }
  // python3-h5py reads the directly written bytes as the same arrays.
  if (test::run("/usr/bin/python3 -c 'import h5py'").exit_code != 0) GTEST_SKIP() << "python3-h5py is not installed";
  auto py = test::run("cd / && /usr/bin/python3 -c \"import h5py, numpy as np; f=h5py.File('" + (dir / "direct.h5").string() +
                      "','r'); print(int(f['params/i8_odd'][...].astype(np.int64).sum()), repr(float(f['params/unaligned'][...].astype(np.float64).sum())), int(f['params/bool_odd'][...].sum()))\"");
  ASSERT_EQ(py.exit_code, 0) << py.output;
  std::istringstream got(py.output);
  int64_t i8_sum = 0, bool_sum = 0;
  double f32_sum = 0;
  got >> i8_sum >> f32_sum >> bool_sum;
  EXPECT_EQ(i8_sum, s.at("i8_odd").value.to(at::kLong).sum().item<int64_t>());
  EXPECT_EQ(bool_sum, s.at("bool_odd").value.to(at::kLong).sum().item<int64_t>());
  EXPECT_NEAR(f32_sum, s.at("unaligned").value.to(at::kDouble).sum().item<double>(), 1e-5);
}

TEST(Hdf5Io, CorruptionInAnySliceOfALargeDatasetIsDetected) {
  test::TempDir dir;
  State s;
  s.insert("x", {Param, at::zeros({100}), {}});
  s.insert("w", {Param, at::full({1 << 20}, 1.0f), {}});  // 4 MiB: 16 slices of 256 KiB
  const auto clean = (dir / "clean.h5").string();
  {
    H5File f = H5File::create(clean);
    io::PendingWrites pending = write_state(f, "params", s);
    f.close(std::move(pending));
  }
  for (size_t at_byte : {size_t(0), size_t(3 << 19) + 5, size_t(4 << 20) - 1}) {
    const auto path = (dir / ("c" + std::to_string(at_byte) + ".h5")).string();
    std::filesystem::copy_file(clean, path);
    flip_byte_after(path, kOnes, at_byte);
    H5File f = H5File::open(path);
    try {
      read_state(f, "params", s);
      ADD_FAILURE() << "byte " << at_byte;
    } catch (const Error& e) {
      std::string m = e.what();
      EXPECT_NE(m.find("checksum mismatch"), std::string::npos) << m;
      EXPECT_NE(m.find("/params/w"), std::string::npos) << m;
    }
    // Unverified, the flipped value comes back: the bytes really come from the file.
    ReadOptions o;
    o.verify_checksums = false;
    EXPECT_FALSE(read_state(f, "params", s, o).at("w").value.equal(s.at("w").value)) << "byte " << at_byte;
  }
}

TEST(Hdf5Io, OfSeveralCorruptDatasetsTheFirstReadIsNamedEveryTime) {
  test::TempDir dir;
  State s;
  for (const char* p : {"a", "b", "c"}) s.insert(p, {Param, at::full({1 << 19}, 1.0f), {}});
  const auto path = (dir / "two.h5").string();
  {
    H5File f = H5File::create(path);
    io::PendingWrites pending = write_state(f, "params", s);
    f.close(std::move(pending));
  }
  // Corrupt the last byte of every dataset's data (the 2 MiB runs of 1.0f, in file order).
  for (size_t k = 0, pos = 0; k < 3; ++k) pos = flip_byte_after(path, kOnes, (size_t(2) << 20) - 1, pos) + (size_t(2) << 20);
  H5File f = H5File::open(path);
  const std::string first = "/params/" + s.paths()[0] + ":";
  for (int i = 0; i < 10; ++i) {
    try {
      read_state(f, "params", s);
      ADD_FAILURE();
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(first), std::string::npos) << e.what();
    }
  }
}

TEST(Hdf5Io, AnErrorWhileLargeReadsAreInFlightLeavesCleanly) {
  test::TempDir dir;
  State s;
  for (int i = 0; i < 8; ++i) s.insert("p" + std::to_string(i), {Param, at::randn({1 << 19}), {}});
  s.insert("q", {Param, at::randn({3}), {}});
  const auto path = (dir / "e.h5").string();
  {
    H5File f = H5File::create(path);
    io::PendingWrites pending = write_state(f, "params", s);
    f.close(std::move(pending));
  }
  H5File f = H5File::open(path);
  State wrong = s;
  wrong.at("q").value = at::zeros({4});  // read after the large ones were handed to the readers
  for (int i = 0; i < 5; ++i) {
    try {
      read_state(f, "params", wrong);
      ADD_FAILURE();
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("shape mismatch at 'q'"), std::string::npos) << e.what();
    }
  }
  EXPECT_TRUE(read_state(f, "params", s).equal(s));
}

TEST(Hdf5Io, DatasetsRewrittenBigEndianOrChunkedAreReadThroughHdf5) {
  if (test::run("/usr/bin/python3 -c 'import h5py'").exit_code != 0) GTEST_SKIP() << "python3-h5py is not installed";
  test::TempDir dir;
  State s;
  s.insert("w", {Param, at::randn({1 << 19}), {}});
  s.insert("v", {Param, at::randn({1 << 19}), {}});
  const auto path = (dir / "be.h5").string();
  {
    H5File f = H5File::create(path);
    io::PendingWrites pending = write_state(f, "params", s);
    f.close(std::move(pending));
  }
  // Another tool rewrites w as big-endian float32 and v chunked and gzip-compressed, keeping
  // the attributes: both are read through HDF5 (conversion, filters).
  auto edit = test::run("cd / && /usr/bin/python3 -c \"import h5py; f=h5py.File('" + path +
                        "','r+'); d=f['params/w']; a=dict(d.attrs); v=d[()]; del f['params/w'];"
                        " n=f['params'].create_dataset('w', data=v.astype('>f4')); n.attrs.update(a);"
                        " d=f['params/v']; a=dict(d.attrs); v=d[()]; del f['params/v'];"
                        " n=f['params'].create_dataset('v', data=v, chunks=(4096,), compression='gzip'); n.attrs.update(a)\"");
  ASSERT_EQ(edit.exit_code, 0) << edit.output;
  H5File f = H5File::open(path);
  auto [back, stats] = read_counted(f, "params", s);  // checksums cover the values, not the byte order
  EXPECT_TRUE(back.equal(s)) << back.first_difference(s);
  EXPECT_EQ(stats.direct_reads, 0);
  EXPECT_EQ(stats.hdf5_reads, 2);
}

// A multi-rank checkpoint's virtual datasets are read directly from the shard files when
// their pieces are whole row blocks: a dim-0 stitched array piece by piece (each piece checked
// against its own checksum), and replicated tensors mapped onto one rank's dataset.
TEST(Hdf5Io, LargeVirtualDatasetsAreReadFromTheShardFiles) {
  const at::Tensor global = at::randn({3001, 100});  // 1.2 MB; 3 uneven pieces
  for (int64_t dim : {0, 1}) {
    test::TempDir dir;
    const auto spec = PartitionSpec::sharded(dim, 2);
    const auto path = write_stitched(dir.path(), global, spec, 3);
    H5File f = H5File::open(path);
    auto [whole, stats] = read_counted(f, "opt", sharded_template({3001, 100}, PartitionSpec(), {}));
    EXPECT_TRUE(at::equal(whole.at("w").value, global)) << dim;
    EXPECT_EQ(stats.direct_reads, dim == 0 ? 3 : 0) << dim;  // along dim 1 the pieces are not row blocks
    EXPECT_EQ(stats.hdf5_reads, dim == 0 ? 0 : 1) << dim;
  }
  // Replicated tensors, each written by one of two ranks.
  test::TempDir dir;
  std::map<std::string, VirtualSource> sources;
  State all;
  for (int r = 0; r < 2; ++r) {
    const std::string name = "shard-" + std::to_string(r) + "-of-2.h5";
    State mine;
    mine.insert("p" + std::to_string(r), {Param, at::randn({600, 1000}), {}});
    H5File f = H5File::create((dir / name).string());
    io::PendingWrites pending = write_state(f, "params", mine);
    for (const auto& info : list_item(f, "params")) sources[info.path].pieces.push_back({name, info.checksum, info.shape});
    f.close(std::move(pending));
    for (const auto& [p, vs] : mine) all.insert(p, vs);
  }
  {
    H5File f = H5File::create((dir / "checkpoint.h5").string());
    io::PendingWrites pending = write_state_virtual(f, "params", all, sources);
    f.close(std::move(pending));
  }
  H5File f = H5File::open((dir / "checkpoint.h5").string());
  auto [back, stats] = read_counted(f, "params", all);
  EXPECT_TRUE(back.equal(all)) << back.first_difference(all);
  EXPECT_EQ(stats.direct_reads, 2);
  EXPECT_EQ(stats.hdf5_reads, 0);
}

TEST(Hdf5Io, ACorruptPieceOfALargeStitchedArrayIsNamed) {
  test::TempDir dir;
  const at::Tensor global = at::full({3000, 100}, 1.0f);
  const auto path = write_stitched(dir.path(), global, PartitionSpec::sharded(0, 2), 3);
  flip_byte_after((dir / "shard-2-of-3.h5").string(), kOnes, 100000);
  H5File f = H5File::open(path);
  try {
    read_state(f, "opt", sharded_template({3000, 100}, PartitionSpec(), {}));
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("checksum mismatch"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("piece at 2000 along dim 0"), std::string::npos) << e.what();
  }
}
