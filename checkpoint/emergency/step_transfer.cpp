#include "nnx/checkpoint/emergency/step_transfer.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "nnx/checkpoint/commit.h"
#include "nnx/checkpoint/format/schema.h"
#include "nnx/checkpoint/io/direct_writer.h"
#include "nnx/checkpoint/io/fs.h"
#include "nnx/checkpoint/io/parallel_reader.h"
#include "nnx/framework/distributed.h"
#include "nnx/framework/error.h"

namespace nnx::checkpoint::emergency {

namespace stdfs = std::filesystem;

namespace {

constexpr int64_t kMaxHeaderBytes = 1 << 20;
constexpr size_t kMaxFiles = 64;

struct OpenFile {
  std::string name;
  int64_t size = 0;
  checkpoint::io::UniqueFd fd;
};

// The step's files, opened now: _CHECKPOINT_METADATA last (the receiver's commit marker).
std::vector<OpenFile> open_step_files(const stdfs::path& dir) {
  std::vector<OpenFile> files;
  for (const auto& e : stdfs::directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    OpenFile f;
    f.name = e.path().filename().string();
    f.fd = checkpoint::io::UniqueFd(::open(e.path().c_str(), O_RDONLY | O_CLOEXEC));
    NNX_CHECK(f.fd.get() >= 0, "cannot open '", e.path().string(), "': ", std::strerror(errno));
    f.size = static_cast<int64_t>(::lseek(f.fd.get(), 0, SEEK_END));
    files.push_back(std::move(f));
  }
  std::sort(files.begin(), files.end(), [](const OpenFile& a, const OpenFile& b) {
    const bool am = a.name == checkpoint::kMetadataFile, bm = b.name == checkpoint::kMetadataFile;
    return am != bm ? bm : a.name < b.name;
  });
  NNX_CHECK(!files.empty() && files.back().name == checkpoint::kMetadataFile, "'", dir.string(),
            "' is not a committed step (no ", checkpoint::kMetadataFile, ")");
  return files;
}

void send_word(distributed::ProcessGroup& pg, int64_t v, int dst, int tag) {
  pg.send(at::tensor({v}, at::kLong), dst, tag);
}

int64_t recv_word(distributed::ProcessGroup& pg, int src, int tag) {
  at::Tensor t = at::zeros({1}, at::kLong);
  pg.recv(t, src, tag);
  return t.item<int64_t>();
}

void send_text(distributed::ProcessGroup& pg, const std::string& s, int dst, int tag) {
  send_word(pg, static_cast<int64_t>(s.size()), dst, tag);
  if (s.empty()) return;
  at::Tensor t = at::empty({static_cast<int64_t>(s.size())}, at::kByte);
  std::memcpy(t.data_ptr(), s.data(), s.size());
  pg.send(t, dst, tag);
}

std::string recv_text(distributed::ProcessGroup& pg, int src, int tag) {
  const int64_t n = recv_word(pg, src, tag);
  NNX_CHECK(n >= 0 && n <= kMaxHeaderBytes, "step transfer from rank ", src, ": a header of ", n, " bytes");
  if (n == 0) return {};
  at::Tensor t = at::empty({n}, at::kByte);
  pg.recv(t, src, tag);
  return std::string(static_cast<const char*>(t.data_ptr()), static_cast<size_t>(n));
}

}  // namespace

int64_t send_step(distributed::ProcessGroup& pg, const stdfs::path& step_dir, int64_t step, int dst, int tag) {
  std::vector<OpenFile> files;
  std::string error;
  try {
    files = open_step_files(step_dir);
  } catch (const std::exception& e) {
    error = e.what();
  }
  nlohmann::json header = {{"step", step}, {"files", nlohmann::json::array()}};
  if (!error.empty()) header["error"] = error;
  int64_t total = 0, largest = 0;
  for (const auto& f : files) {
    header["files"].push_back({{"name", f.name}, {"size", f.size}});
    total += f.size;
    largest = std::max(largest, f.size);
  }
  send_text(pg, header.dump(), dst, tag);
  NNX_CHECK(error.empty(), error);
  at::Tensor buf = at::empty({std::min(largest, kTransferChunkBytes)}, at::kByte);
  std::string read_error;  // the stream stays complete either way; the peer discards it
  for (const auto& f : files) {
    for (int64_t off = 0; off < f.size; off += kTransferChunkBytes) {
      const int64_t n = std::min(kTransferChunkBytes, f.size - off);
      if (read_error.empty()) try {
          checkpoint::io::read_slices(f.fd.get(), static_cast<char*>(buf.data_ptr()), static_cast<size_t>(n),
                                      static_cast<uint64_t>(off), "'" + (step_dir / f.name).string() + "'", nullptr);
        } catch (const std::exception& e) {
          read_error = e.what();
        }
      pg.send(buf.narrow(0, 0, n), dst, tag);
    }
  }
  send_word(pg, read_error.empty() ? 0 : 1, dst, tag);
  const int64_t held = recv_word(pg, dst, tag);  // the peer's answer, once committed (or not)
  NNX_CHECK(read_error.empty(), read_error);
  NNX_CHECK_IO(held == 0, "rank ", dst, " did not commit step ", step, " (its log says why)");
  return total;
}

namespace {

struct Entry {
  std::string name;
  int64_t size = 0;
};

// The header's files, each a plain name and a size (any bytes from the wire are checked).
std::vector<Entry> parse_entries(const nlohmann::json& h, int src) {
  const std::string from = "step transfer from rank " + std::to_string(src) + ": ";
  NNX_CHECK(h.is_object() && h.contains("step") && h["step"].is_number_integer() && h["step"].get<int64_t>() >= 0,
            from, "the header has no step");
  NNX_CHECK(h.contains("files") && h["files"].is_array() && h["files"].size() <= kMaxFiles, from, "the header has no file list");
  std::vector<Entry> out;
  for (const auto& f : h["files"]) {
    NNX_CHECK(f.is_object() && f.contains("name") && f["name"].is_string() && f.contains("size") &&
                  f["size"].is_number_integer() && f["size"].get<int64_t>() >= 0,
              from, "a malformed file entry ", f.dump());
    Entry e{f["name"].get<std::string>(), f["size"].get<int64_t>()};
    NNX_CHECK(!e.name.empty() && e.name != "." && e.name != ".." && e.name.find('/') == std::string::npos &&
                  e.name.find('\0') == std::string::npos,
              from, "a file name '", e.name, "' that is not a plain name");
    out.push_back(std::move(e));
  }
  NNX_CHECK(!out.empty() && out.back().name == checkpoint::kMetadataFile, from, "the step has no ",
            checkpoint::kMetadataFile);
  return out;
}

// Receives the files' bytes: the step's files into `tmp` (when not `discard`), the metadata into
// `metadata` (commit_save writes it, last). All of them are received even after a failed write,
// so the stream stays aligned for the next transfer; returns the first write error ("" = none).
std::string recv_files(distributed::ProcessGroup& pg, int src, int tag, const std::vector<Entry>& files,
                       const stdfs::path& tmp, bool discard, std::string& metadata) {
  int64_t largest = 0;
  for (const auto& f : files) largest = std::max(largest, f.size);
  at::Tensor buf = at::empty({std::min(largest, kTransferChunkBytes)}, at::kByte);
  std::string error;
  for (const auto& f : files) {
    const stdfs::path path = tmp / f.name;
    const bool in_memory = f.name == checkpoint::kMetadataFile;
    checkpoint::io::UniqueFd fd(discard || in_memory ? -1 : ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
    if (!discard && !in_memory && fd.get() < 0 && error.empty()) error = "cannot create '" + path.string() + "': " + std::strerror(errno);
    for (int64_t off = 0; off < f.size; off += kTransferChunkBytes) {
      at::Tensor part = buf.narrow(0, 0, std::min(kTransferChunkBytes, f.size - off));
      pg.recv(part, src, tag);
      if (in_memory && !discard) metadata.append(static_cast<const char*>(part.data_ptr()), static_cast<size_t>(part.numel()));
      if (fd.valid() && error.empty()) try {
          checkpoint::io::pwrite_all(fd.get(), static_cast<const char*>(part.data_ptr()), static_cast<size_t>(part.numel()),
                                     static_cast<uint64_t>(off), "'" + path.string() + "'");
        } catch (const std::exception& e) {
          error = e.what();
        }
    }
    if (fd.valid() && error.empty() && ::fsync(fd.get()) != 0) error = "cannot fsync '" + path.string() + "': " + std::strerror(errno);
  }
  return error;
}

// The rest of a transfer after a failure before its files: received and dropped.
void drain(distributed::ProcessGroup& pg, int src, int tag, const std::vector<Entry>& files) {
  std::string ignored;
  recv_files(pg, src, tag, files, {}, /*discard=*/true, ignored);
  recv_word(pg, src, tag);
}

// Receives a step's files into `target` through the library's commit (commit_save, as one rank).
// Returns the error that keeps this rank from holding the step ("" = committed); the stream is
// consumed either way. A transport failure is rethrown: no answer could reach the sender.
std::string commit_received(distributed::ProcessGroup& pg, int src, int tag, const std::vector<Entry>& files,
                            int64_t step, const stdfs::path& target) {
  bool received = false;         // the stream was consumed (else it is drained below)
  std::exception_ptr transport;  // the network failed
  std::string metadata;
  checkpoint::SaveSteps steps;
  steps.write_rank_files = [&](const stdfs::path& tmp) {
    std::string e;
    try {
      e = recv_files(pg, src, tag, files, tmp, /*discard=*/false, metadata);
      const int64_t status = recv_word(pg, src, tag);
      if (e.empty() && status != 0) e = "rank " + std::to_string(src) + " could not read its step " + std::to_string(step);
    } catch (...) {
      transport = std::current_exception();
      throw;
    }
    received = true;
    NNX_CHECK_IO(e.empty(), e);
    return std::vector<checkpoint::FileEntry>{};  // the sender's metadata lists the files
  };
  steps.write_leader_files = [](const stdfs::path&) { return std::vector<checkpoint::FileEntry>{}; };
  steps.metadata = [&](const std::vector<checkpoint::FileEntry>&) {
    try {
      return nlohmann::json::parse(metadata);
    } catch (const std::exception& e) {
      NNX_CHECK(false, "step transfer from rank ", src, ": its ", checkpoint::kMetadataFile, " is not JSON (", e.what(), ")");
    }
    return nlohmann::json();
  };
  try {
    checkpoint::LocalCoordinator one;
    checkpoint::commit_save(one, "replica", target, steps);
  } catch (const std::exception& e) {
    if (transport) std::rethrow_exception(transport);
    if (!received) drain(pg, src, tag, files);  // e.g. its temporary folder could not be made
    return e.what();
  }
  return {};
}

}  // namespace

// The commit is the library's (commit_save, as one rank): a temporary folder beside the target,
// the files, _CHECKPOINT_METADATA last, fsyncs, a rename that never replaces. The bytes are the
// sender's, so the checksums its metadata lists still describe them.
ReceivedStep recv_step(distributed::ProcessGroup& pg, int src, int tag,
                       const std::function<stdfs::path(int64_t step)>& target_of) {
  nlohmann::json h;
  const std::string text = recv_text(pg, src, tag);
  try {
    h = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    NNX_CHECK(false, "step transfer from rank ", src, ": the header is not JSON (", e.what(), ")");
  }
  if (h.is_object() && h.contains("error") && h["error"].is_string())
    NNX_CHECK(false, "rank ", src, " could not send its step: ", h["error"].get<std::string>());
  const std::vector<Entry> files = parse_entries(h, src);
  ReceivedStep r;
  r.step = h["step"].get<int64_t>();
  for (const auto& f : files) r.bytes += f.size;
  stdfs::path target;
  std::string error;
  try {
    target = target_of(r.step);
  } catch (const std::exception& e) {
    error = e.what();  // no place for it: received and dropped, the sender told
  }
  std::error_code ec;
  const bool discard = !error.empty() || stdfs::exists(target, ec);
  if (discard) {
    drain(pg, src, tag, files);
  } else {
    error = commit_received(pg, src, tag, files, r.step, target);
  }
  send_word(pg, error.empty() ? 0 : 1, src, tag);  // the sender learns whether this rank holds the step
  NNX_CHECK_IO(error.empty(), error);
  r.committed = !discard;
  return r;
}

}  // namespace nnx::checkpoint::emergency
