#include "nnx/checkpoint/commit.h"

#include <system_error>

#include "nnx/checkpoint/format/schema.h"
#include "nnx/checkpoint/io/fs.h"
#include "nnx/framework/error.h"
#include "nnx/framework/error_kind.h"

namespace nnx::checkpoint {

namespace stdfs = std::filesystem;

namespace {

std::string message_of(const std::exception_ptr& e) {
  if (!e) return {};
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return x.what();
  } catch (...) {
    return "unknown error";
  }
}

// A message of type T under `key`; throws nnx::Error naming `who` when it is malformed.
template <typename T>
T receive_as(Coordinator& c, const std::string& key, const std::string& who) {
  const nlohmann::json j = c.receive(key);
  try {
    return j.get<T>();
  } catch (const nlohmann::json::exception&) {
    NNX_CHECK(false, who, " sent a malformed message: '", j.dump(), "'");
  }
  return T{};
}

RankReport receive_report(Coordinator& c, const std::string& key, int r) {
  const std::string who = "rank " + std::to_string(r);
  RankReport rep = receive_as<RankReport>(c, key + "/report" + std::to_string(r), who);
  for (const auto& f : rep.files)
    NNX_CHECK(f.size >= 0 && f.checksum.rfind("xxh3_64:", 0) == 0 && f.structure.is_object() && !f.name.empty(), who,
              " reported a malformed size and checksum of its shard: '", nlohmann::json(f).dump(), "'");
  return rep;
}

// Step 1: the leader creates the temporary directory and tells the others its name (or error).
stdfs::path agree_on_tmp(Coordinator& c, const std::string& key, const stdfs::path& path) {
  if (c.rank() == 0) {
    TmpDirMessage m;
    if (stdfs::exists(path)) {
      m.exists = true;
      m.error = "checkpoint '" + path.string() + "' already exists; it is never overwritten";
    } else {
      const stdfs::path tmp = path.string() + ".tmp-" + io::unique_suffix();
      std::error_code ec;
      stdfs::create_directories(tmp, ec);
      if (ec) m.error = "cannot create checkpoint directory '" + tmp.string() + "': " + ec.message();
      else m.dir = tmp.string();
    }
    c.publish(key + "/tmp", m);
  }
  const auto m = receive_as<TmpDirMessage>(c, key + "/tmp", "rank 0");
  NNX_CHECK(!m.exists, m.error);
  NNX_CHECK_IO(m.error.empty(), m.error);
  return m.dir;
}

// The leader removes the temporary directory whenever the save ends by an exception (a failed
// rank, ranks that disagree, a collective that timed out); a committed one was renamed away.
struct RemoveTmpOnError {
  stdfs::path dir;
  int uncaught = std::uncaught_exceptions();
  ~RemoveTmpOnError() {
    if (!dir.empty() && std::uncaught_exceptions() > uncaught) {
      std::error_code ec;
      io::remove_tree(dir, ec);
    }
  }
};

// Steps 2-3: this rank's files; returns its report (with the exception, for a single rank).
RankReport write_rank(const stdfs::path& path, const stdfs::path& tmp, const SaveSteps& steps, std::exception_ptr& failed) {
  RankReport report;
  // Every rank must be saving the same step: a rank whose n-th save is another path than the
  // leader's (a save decided on per-rank state) fails the save everywhere instead of mixing steps.
  if (tmp.string().rfind(path.string() + ".tmp-", 0) != 0) {
    report.error = "this rank saves '" + path.string() + "' while rank 0 saves '" +
                   tmp.string().substr(0, tmp.string().rfind(".tmp-")) + "' (ranks must save the same steps together)";
    return report;
  }
  try {
    report.files = steps.write_rank_files(tmp);
  } catch (...) {
    failed = std::current_exception();
    report.error = message_of(failed);
    report.error_kind = static_cast<int>(error_kind_of(failed));
  }
  return report;
}

// Step 4, on the leader: its files, the metadata last, the rename. Returns the error, if any.
std::exception_ptr lead_commit(Coordinator& c, const std::string& key, const stdfs::path& path, const stdfs::path& tmp,
                               const SaveSteps& steps) {
  try {
    std::vector<FileEntry> files = steps.write_leader_files(tmp);
    for (int r = 0; r < c.world_size(); ++r) {
      auto rep = receive_report(c, key, r);
      files.insert(files.end(), rep.files.begin(), rep.files.end());
    }
    io::write_file_synced(tmp / kMetadataFile, steps.metadata(files).dump(2));
    io::fsync_path(tmp);
    io::rename_no_replace(tmp, path);
    return nullptr;
  } catch (...) {
    std::error_code ec;
    io::remove_tree(tmp, ec);
    return std::current_exception();
  }
}

}  // namespace

void commit_save(Coordinator& c, const std::string& key, const stdfs::path& path, const SaveSteps& steps) {
  const stdfs::path tmp = agree_on_tmp(c, key, path);
  RemoveTmpOnError cleanup{c.rank() == 0 ? tmp : stdfs::path()};
  const int n = c.world_size();
  NNX_CHECK(n == 1 || c.all_equal(steps.plan_digest), "distributed save of '", path.string(), "': ", steps.plan_mismatch);
  std::exception_ptr failed;
  const RankReport report = write_rank(path, tmp, steps, failed);
  if (n == 1 && failed) std::rethrow_exception(failed);  // one rank: its own error, type kept
  c.publish(key + "/report" + std::to_string(c.rank()), report);
  // Everyone learns whether every rank's files are written (a missing rank times out here).
  if (c.any(!report.error.empty())) {
    // Every rank throws the type of the lowest failing rank's error: the same on every rank, and
    // the type one rank alone would have thrown for the same input.
    std::string all;
    int kind = -1;
    for (int r = 0; r < n; ++r)
      if (auto rep = receive_report(c, key, r); !rep.error.empty()) {
        all += "\n  rank " + std::to_string(r) + ": " + rep.error;
        if (kind < 0) kind = rep.error_kind;
      }
    throw_error(static_cast<ErrorKind>(kind), "distributed save of '" + path.string() + "' failed:" + all);
  }
  if (c.rank() == 0) {
    std::exception_ptr e = lead_commit(c, key, path, tmp, steps);
    if (n == 1 && e) std::rethrow_exception(e);
    c.publish(key + "/commit", CommitOutcome{message_of(e), static_cast<int>(error_kind_of(e))});
  }
  const auto outcome = receive_as<CommitOutcome>(c, key + "/commit", "rank 0");
  if (!outcome.error.empty())
    throw_error(static_cast<ErrorKind>(outcome.error_kind),
                "distributed save of '" + path.string() + "' failed on rank 0: " + outcome.error);
}

void all_succeed_or_throw(Coordinator& c, const std::string& key, std::exception_ptr error, const std::string& what) {
  if (c.world_size() == 1) {
    if (error) std::rethrow_exception(error);
    return;
  }
  c.publish(key + "/rank" + std::to_string(c.rank()), CommitOutcome{message_of(error), static_cast<int>(error_kind_of(error))});
  if (!c.any(error != nullptr)) return;
  if (error) std::rethrow_exception(error);
  for (int r = 0; r < c.world_size(); ++r) {
    const auto o = receive_as<CommitOutcome>(c, key + "/rank" + std::to_string(r), "rank " + std::to_string(r));
    if (!o.error.empty())  // the failing rank's type (it was nnx::Error, exit 2, whatever it was)
      throw_error(static_cast<ErrorKind>(o.error_kind), what + " failed on another rank: rank " + std::to_string(r) + ": " + o.error);
  }
  NNX_INTERNAL_ASSERT(false, what, ": a rank failed but none reported an error");
}

}  // namespace nnx::checkpoint
