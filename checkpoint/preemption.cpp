#include "nnx/checkpoint/preemption.h"

#include <signal.h>

#include <atomic>
#include <mutex>

namespace nnx::checkpoint {

namespace {
std::atomic<int> g_signal{0};
std::mutex g_sig_mu;
int g_sig_users = 0;
struct sigaction g_old_term, g_old_int;

extern "C" void on_preemption_signal(int sig) { g_signal.store(sig); }

}  // namespace

void install_preemption_handlers() {
  std::lock_guard<std::mutex> lock(g_sig_mu);
  if (g_sig_users++ > 0) return;
  struct sigaction sa {};
  sa.sa_handler = on_preemption_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, &g_old_term);
  sigaction(SIGINT, &sa, &g_old_int);
}

void uninstall_preemption_handlers() {
  std::lock_guard<std::mutex> lock(g_sig_mu);
  if (--g_sig_users > 0) return;
  sigaction(SIGTERM, &g_old_term, nullptr);
  sigaction(SIGINT, &g_old_int, nullptr);
}

int preemption_signal() { return g_signal.load(); }
void reset_preemption() { g_signal.store(0); }

}  // namespace nnx::checkpoint
