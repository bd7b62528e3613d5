// What an asynchronous save does when the previous one is still being written (its own header:
// configs name it without the manager).
#pragma once

namespace nnx::checkpoint {

/// What an async save does when the previous one is still being written.
enum class BusyPolicy {
  kWait,  ///< wait for it, then save (training stalls while the disk catches up)
  /// Save nothing this time and return false, unless forced (the last step, a preemption);
  /// with several ranks, every rank skips when any rank is still writing.
  kSkip,
  /// Snapshot into a second set of host buffers (two snapshots of extra memory) without waiting;
  /// its write starts when the previous save finished, so steps commit in order. A third save
  /// while two are in flight waits for the older.
  kSecondBuffer,
};

}  // namespace nnx::checkpoint
