// nnx-launch --nproc N [--master-port P] [--grace-seconds S] -- PROGRAM ARGS...
// Starts N local ranks of PROGRAM with torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK,
// LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), prefixes every output line with "[rank r] ",
// forwards SIGTERM/SIGINT to all ranks, and when one rank fails stops the others (SIGTERM, then
// SIGKILL after the grace period) and exits non-zero. Ranks die with the launcher
// (PR_SET_PDEATHSIG), so no orphans are left behind.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

namespace {

volatile sig_atomic_t g_signal = 0;
void on_signal(int sig) { g_signal = sig; }

int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof(a);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    if (fd >= 0) ::close(fd);
    return 29500;
  }
  int port = ntohs(a.sin_port);
  ::close(fd);
  return port;
}

struct Rank {
  pid_t pid = -1;
  int fd = -1;  // read end of the rank's stdout+stderr
  std::string partial;
  bool running = false;
  int status = 0;
};

void usage() {
  std::cerr << "usage: nnx-launch --nproc N [--master-port P] [--grace-seconds S] -- PROGRAM [ARGS...]\n";
}

void emit(int rank, const std::string& line) {
  std::string out = "[rank " + std::to_string(rank) + "] " + line + "\n";
  ssize_t w = ::write(STDOUT_FILENO, out.data(), out.size());
  (void)w;
}

}  // namespace

int main(int argc, char** argv) {
  int nproc = -1, port = 0, grace = 10;
  int i = 1;
  for (; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--") {
      ++i;
      break;
    }
    auto value = [&](int& out) {
      if (i + 1 >= argc) {
        usage();
        std::exit(2);
      }
      char* end = nullptr;
      out = static_cast<int>(std::strtol(argv[++i], &end, 10));
      if (!end || *end) {
        std::cerr << "nnx-launch: error: " << a << " needs an integer, got '" << argv[i] << "'\n";
        std::exit(2);
      }
    };
    if (a == "--nproc") value(nproc);
    else if (a == "--master-port") value(port);
    else if (a == "--grace-seconds") value(grace);
    else if (a == "-h" || a == "--help") {
      usage();
      return 0;
    } else {
      std::cerr << "nnx-launch: error: unknown option '" << a << "'\n";
      usage();
      return 2;
    }
  }
  if (nproc < 1 || i >= argc) {
    std::cerr << "nnx-launch: error: " << (nproc < 1 ? "--nproc N (N >= 1) is required" : "no PROGRAM after --") << "\n";
    usage();
    return 2;
  }
  if (port == 0) port = free_port();
  std::vector<char*> child_argv(argv + i, argv + argc);
  child_argv.push_back(nullptr);

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  std::vector<Rank> ranks(static_cast<size_t>(nproc));
  const pid_t launcher = ::getpid();
  for (int r = 0; r < nproc; ++r) {
    int p[2];
    if (::pipe(p) != 0) {
      std::perror("nnx-launch: pipe");
      return 1;
    }
    pid_t pid = ::fork();
    if (pid == 0) {
      ::setpgid(0, 0);  // a rank and everything it starts form one group, signalled together
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != launcher) ::_exit(1);
      ::dup2(p[1], STDOUT_FILENO);
      ::dup2(p[1], STDERR_FILENO);
      ::close(p[0]);
      ::close(p[1]);
      ::signal(SIGTERM, SIG_DFL);
      ::signal(SIGINT, SIG_DFL);
      ::setenv("RANK", std::to_string(r).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      ::setenv("LOCAL_WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      ::setenv("MASTER_ADDR", "127.0.0.1", 1);
      ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      ::setenv("NNX_LAUNCH", "1", 1);  // tells loggers that lines get a rank prefix here
      ::execvp(child_argv[0], child_argv.data());
      std::fprintf(stderr, "nnx-launch: cannot run '%s': %s\n", child_argv[0], std::strerror(errno));
      ::_exit(127);
    }
    ::close(p[1]);
    ::setpgid(pid, pid);
    ranks[static_cast<size_t>(r)].pid = pid;
    ranks[static_cast<size_t>(r)].fd = p[0];
    ranks[static_cast<size_t>(r)].running = true;
  }

  int exit_code = 0;
  int first_failed = -1;
  bool stopping = false;
  auto stop_started = std::chrono::steady_clock::now();
  int forwarded = 0;
  while (true) {
    // Forward a signal the launcher received to every rank, once per signal.
    if (g_signal != 0 && g_signal != forwarded) {
      forwarded = g_signal;
      for (auto& rk : ranks)
        if (rk.running) ::kill(-rk.pid, forwarded);
    }
    std::vector<pollfd> fds;
    std::vector<int> owners;
    for (size_t r = 0; r < ranks.size(); ++r)
      if (ranks[r].fd >= 0) {
        fds.push_back({ranks[r].fd, POLLIN, 0});
        owners.push_back(static_cast<int>(r));
      }
    if (!fds.empty()) ::poll(fds.data(), fds.size(), 100);
    for (size_t k = 0; k < fds.size(); ++k) {
      if (!(fds[k].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      Rank& rk = ranks[static_cast<size_t>(owners[k])];
      char buf[4096];
      ssize_t n = ::read(rk.fd, buf, sizeof(buf));
      if (n <= 0) {
        if (!rk.partial.empty()) emit(owners[k], rk.partial);
        rk.partial.clear();
        ::close(rk.fd);
        rk.fd = -1;
        continue;
      }
      rk.partial.append(buf, static_cast<size_t>(n));
      size_t pos;
      while ((pos = rk.partial.find_first_of("\n\r")) != std::string::npos) {
        if (pos > 0) emit(owners[k], rk.partial.substr(0, pos));
        rk.partial.erase(0, pos + 1);
      }
    }
    // Reap ranks; the first failure stops the others.
    for (size_t r = 0; r < ranks.size(); ++r) {
      Rank& rk = ranks[r];
      if (!rk.running) continue;
      int status = 0;
      if (::waitpid(rk.pid, &status, WNOHANG) != rk.pid) continue;
      rk.running = false;
      rk.status = status;
      int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      if (code != 0 && first_failed < 0 && !(g_signal && code == 0)) {
        first_failed = static_cast<int>(r);
        exit_code = code;
        std::cerr << "nnx-launch: rank " << r << " failed with "
                  << (WIFEXITED(status) ? "exit code " + std::to_string(code) : "signal " + std::to_string(WTERMSIG(status)))
                  << "; stopping the other ranks\n";
        stopping = true;
        stop_started = std::chrono::steady_clock::now();
        for (auto& other : ranks)
          if (other.running) ::kill(-other.pid, SIGTERM);
      }
    }
    if (stopping && std::chrono::steady_clock::now() - stop_started > std::chrono::seconds(grace))
      for (auto& other : ranks) {
        if (other.running) ::kill(-other.pid, SIGKILL);
        if (!other.running && other.fd >= 0) {  // a dead rank's children may hold its output open
          ::kill(-other.pid, SIGKILL);
          ::close(other.fd);
          other.fd = -1;
        }
      }
    bool any = false;
    for (auto& rk : ranks) any = any || rk.running || rk.fd >= 0;
    if (!any) break;
  }
  if (first_failed < 0 && g_signal) {
    for (auto& rk : ranks) {
      int code = WIFEXITED(rk.status) ? WEXITSTATUS(rk.status) : 128 + WTERMSIG(rk.status);
      if (code != 0) exit_code = code;
    }
  }
  return exit_code;
}
