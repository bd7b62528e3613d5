// Preemption signals (SIGTERM, SIGINT) seen by CheckpointManagers that handle them.
#pragma once

namespace nnx::checkpoint {

/// The signal (SIGTERM/SIGINT) seen by managers' handlers, or 0.
int preemption_signal();
/// Forgets a seen preemption signal (tests).
void reset_preemption();
/// Internal (the manager): installs the handlers while at least one manager wants them; the
/// previous handlers come back when the last one uninstalls.
void install_preemption_handlers();
void uninstall_preemption_handlers();

}  // namespace nnx::checkpoint
