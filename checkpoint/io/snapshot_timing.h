// When an asynchronous save's host snapshot copies (its own header: configs name it without
// the snapshot machinery).
#pragma once

namespace nnx::checkpoint::io {

/// When a snapshot copies: inside save() (the caller may then change its tensors any way it
/// likes) or after save() returned, beside the caller's next steps (in-place writers of the
/// saved tensors must pass the write fence, nnx::prepare_write, which the framework's writers
/// do: the optimizer, BatchNorm, the collectives, Variable::mutable_value()).
enum class SnapshotTiming { kInSave, kDeferred };

}  // namespace nnx::checkpoint::io
