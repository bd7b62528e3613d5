// How the ranks of one save or restore talk: a local one for a single process, c10d for many.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <memory>
#include <string>

namespace nnx::distributed {
class ProcessGroup;
}

namespace nnx::checkpoint {

/// The messages and collectives of the commit protocol (checkpoint/commit.h). Rank 0 leads.
class Coordinator {
 public:
  virtual ~Coordinator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  /// Publishes `message` under `key` for every rank.
  virtual void publish(const std::string& key, const nlohmann::json& message) = 0;
  /// The message published under `key`, waiting for it. Throws nnx::Error when it does not
  /// come within the group's timeout, or is not JSON.
  virtual nlohmann::json receive(const std::string& key) = 0;
  /// Collective (every rank calls it): true on every rank when `flag` is true on any.
  virtual bool any(bool flag) = 0;
  /// Collective: true on every rank when every rank passed the same `value`.
  virtual bool all_equal(int64_t value) = 0;
};

/// Rank 0 of 1: messages in a map, collectives are identities.
class LocalCoordinator : public Coordinator {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  void publish(const std::string& key, const nlohmann::json& message) override { messages_[key] = message; }
  /// Throws nnx::Error (an internal error) when nothing was published under `key`.
  nlohmann::json receive(const std::string& key) override;
  bool any(bool flag) override { return flag; }
  bool all_equal(int64_t) override { return true; }

 private:
  std::map<std::string, nlohmann::json> messages_;
};

/// The ranks of a c10d process group: messages through its store, collectives through Gloo.
/// A rank that does not join makes the others throw within the group's timeout.
class C10dCoordinator : public Coordinator {
 public:
  explicit C10dCoordinator(std::shared_ptr<distributed::ProcessGroup> group) : group_(std::move(group)) {}
  int rank() const override;
  int world_size() const override;
  void publish(const std::string& key, const nlohmann::json& message) override;
  nlohmann::json receive(const std::string& key) override;
  bool any(bool flag) override;
  bool all_equal(int64_t value) override;

 private:
  std::shared_ptr<distributed::ProcessGroup> group_;
};

}  // namespace nnx::checkpoint
