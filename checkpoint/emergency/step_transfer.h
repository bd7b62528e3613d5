// Moving a committed checkpoint step between ranks over c10d: the local tier's replicas.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>

namespace nnx::distributed {
class ProcessGroup;
}

namespace nnx::checkpoint::emergency {

/// Largest message of a transfer (bytes): a step of any size moves through one buffer this big.
inline constexpr int64_t kTransferChunkBytes = int64_t(64) << 20;

/// Sends the files of the committed step directory `step_dir` (checkpoint `step`) to rank `dst`
/// of `pg` on `tag`: a JSON header (step, each file's name and size, _CHECKPOINT_METADATA
/// last), the bytes in chunks of at most kTransferChunkBytes, then a status word; then it waits
/// for the peer's answer, sent once the step is committed there (or already was), so a return
/// means the peer holds the step. Every file is opened before anything is sent, so retention
/// deleting the step meanwhile does not matter. When a file cannot be opened or read, the peer
/// still gets a complete, failed stream (it commits nothing) and this throws nnx::Error naming
/// the file. Throws nnx::IOError when the transfer fails or the peer did not commit the step.
/// Returns the bytes of the files sent.
int64_t send_step(distributed::ProcessGroup& pg, const std::filesystem::path& step_dir, int64_t step, int dst, int tag);

/// What recv_step() committed.
struct ReceivedStep {
  int64_t step = -1;
  int64_t bytes = 0;
  bool committed = false;  ///< false: the step already existed at its target (nothing written)
};

/// Receives what send_step() sends from rank `src` on `tag` and commits it as the directory
/// `target_of(step)`: the files go to a temporary directory beside it, _CHECKPOINT_METADATA
/// last, each fsynced, then the directory is renamed without replacing (the commit protocol of
/// docs/checkpoint-format.md; the bytes are the sender's, so the checksums in the metadata
/// still describe them). Then it answers the sender: whether this rank holds the step now.
/// Throws nnx::Error when the sender reports a failure or the header is malformed (no answer:
/// the sender sends nothing more), nnx::IOError when the transfer or a write fails; nothing is
/// committed then.
ReceivedStep recv_step(distributed::ProcessGroup& pg, int src, int tag,
                       const std::function<std::filesystem::path(int64_t step)>& target_of);

}  // namespace nnx::checkpoint::emergency
