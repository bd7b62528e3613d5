// The commit protocol: every save, by one rank or many, becomes visible at once or not at all.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "nnx/checkpoint/coordinator.h"

namespace nnx::checkpoint {

/// The leader's temporary directory for a save, or why there is none.
struct TmpDirMessage {
  std::string dir;
  std::string error;
  bool exists = false;  ///< the checkpoint already exists (a usage error, not an I/O one)
};

/// A committed file of a checkpoint, as _CHECKPOINT_METADATA lists it.
struct FileEntry {
  std::string name;
  int64_t size = 0;
  std::string checksum;             ///< "xxh3_64:<hex>" of the whole file
  nlohmann::json structure;         ///< H5File::structure()
};

/// What a rank reports once its files are written (or why they are not).
struct RankReport {
  std::string error;
  int error_kind = 0;  ///< nnx::ErrorKind of `error`: every rank throws that type
  std::vector<FileEntry> files;
};

/// The leader's outcome of the commit.
struct CommitOutcome {
  std::string error;
  int error_kind = 0;  ///< nnx::ErrorKind of `error`
};

NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(TmpDirMessage, dir, error, exists)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(FileEntry, name, size, checksum, structure)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(RankReport, error, error_kind, files)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(CommitOutcome, error, error_kind)

/// What a save does at each step of the protocol.
struct SaveSteps {
  /// Every rank must plan the same save: ranks whose digests differ fail it everywhere with
  /// `plan_mismatch` (world_size > 1 only).
  int64_t plan_digest = 0;
  std::string plan_mismatch;
  /// Every rank: writes and commits this rank's files in `tmp`; returns their entries.
  std::function<std::vector<FileEntry>(const std::filesystem::path& tmp)> write_rank_files;
  /// The leader, once every rank's files are written: writes its own files; returns them.
  std::function<std::vector<FileEntry>(const std::filesystem::path& tmp)> write_leader_files;
  /// The leader: _CHECKPOINT_METADATA given every file (the leader's, then each rank's).
  std::function<nlohmann::json(const std::vector<FileEntry>& files)> metadata;
};

/// Saves checkpoint `path` with the ranks of `coordinator` (key: unique per save, the same on
/// every rank). The leader (rank 0) creates <path>.tmp-<unique>/ and tells the others; every
/// rank writes its files there; every rank learns whether all did; the leader writes its files,
/// then _CHECKPOINT_METADATA last, fsyncs, renames the directory to `path` (never replacing
/// one) and fsyncs the parent; every rank learns the outcome. Any failure removes the temporary
/// directory and fails the save on every rank: one rank rethrows its own exception; several
/// throw an error naming each failing rank's error, of the lowest failing rank's nnx type
/// (nnx::ErrorKind: bad input stays nnx::Error, exit code 2, at any world size). An existing
/// `path` is an nnx::Error.
void commit_save(Coordinator& coordinator, const std::string& key, const std::filesystem::path& path,
                 const SaveSteps& steps);

/// A collective outcome (every rank calls it, e.g. after a restore): returns when no rank
/// failed; else rethrows this rank's `error` if it has one, or throws "<what> failed on another
/// rank: rank <r>: <its error>" with the nnx type of that rank's error (nnx::ErrorKind).
void all_succeed_or_throw(Coordinator& coordinator, const std::string& key, std::exception_ptr error,
                          const std::string& what);

}  // namespace nnx::checkpoint
