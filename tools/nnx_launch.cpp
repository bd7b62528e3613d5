// nnx-launch --nproc N [--master-port P] [--grace-seconds S] [--max-restarts R] -- PROGRAM ARGS...
// Starts N local ranks of PROGRAM with torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK,
// LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), prefixes every output line with "[rank r] ",
// forwards SIGTERM/SIGINT to all ranks, and when one rank fails stops the others (SIGTERM, then
// SIGKILL after the grace period). With --max-restarts R it then starts all N ranks again, up to
// R times (torchrun's --max-restarts: the program resumes from its checkpoints); otherwise, or
// when the restarts are used up, it exits with the failed rank's code. A signal to the launcher
// is never followed by a restart. Ranks die with the launcher (PR_SET_PDEATHSIG), so no orphans
// are left behind.
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
  std::cerr << "usage: nnx-launch --nproc N [--master-port P] [--grace-seconds S] [--max-restarts R] -- PROGRAM [ARGS...]\n";
}

struct Options {
  int nproc = -1, port = 0, grace = 10, max_restarts = 0;
  std::vector<char*> program;  // argv of PROGRAM, null-terminated
};

void emit(int rank, const std::string& line) {
  std::string out = "[rank " + std::to_string(rank) + "] " + line + "\n";
  ssize_t w = ::write(STDOUT_FILENO, out.data(), out.size());
  (void)w;
}

// Parses the command line; exits 2 (with the usage) on a bad one, 0 for --help.
Options parse_args(int argc, char** argv) {
  Options o;
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
    if (a == "--nproc") value(o.nproc);
    else if (a == "--master-port") value(o.port);
    else if (a == "--grace-seconds") value(o.grace);
    else if (a == "--max-restarts") value(o.max_restarts);
    else if (a == "-h" || a == "--help") {
      usage();
      std::exit(0);
    } else {
      std::cerr << "nnx-launch: error: unknown option '" << a << "'\n";
      usage();
      std::exit(2);
    }
  }
  const char* bad = o.nproc < 1 ? "--nproc N (N >= 1) is required"
                    : o.max_restarts < 0 ? "--max-restarts R needs R >= 0"
                    : i >= argc ? "no PROGRAM after --" : nullptr;
  if (bad) {
    std::cerr << "nnx-launch: error: " << bad << "\n";
    usage();
    std::exit(2);
  }
  o.program.assign(argv + i, argv + argc);
  o.program.push_back(nullptr);
  return o;
}

// Forks rank `r` of `o.nproc` with its output on a pipe; false when the pipe cannot be made.
bool start_rank(const Options& o, int r, int port, Rank& rk) {
  int p[2];
  if (::pipe(p) != 0) {
    std::perror("nnx-launch: pipe");
    return false;
  }
  const pid_t launcher = ::getpid();
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
    ::setenv("WORLD_SIZE", std::to_string(o.nproc).c_str(), 1);
    ::setenv("LOCAL_WORLD_SIZE", std::to_string(o.nproc).c_str(), 1);
    ::setenv("MASTER_ADDR", "127.0.0.1", 1);
    ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
    ::setenv("NNX_LAUNCH", "1", 1);  // tells loggers that lines get a rank prefix here
    ::execvp(o.program[0], o.program.data());
    std::fprintf(stderr, "nnx-launch: cannot run '%s': %s\n", o.program[0], std::strerror(errno));
    ::_exit(127);
  }
  ::close(p[1]);
  ::setpgid(pid, pid);
  rk = Rank{};
  rk.pid = pid;
  rk.fd = p[0];
  rk.running = true;
  return true;
}

// Reads what the ranks printed (waiting up to 100 ms) and emits it line by line, prefixed.
void pump_output(std::vector<Rank>& ranks) {
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
}

int exit_code_of(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status); }

// How one start of the ranks ended.
struct RunResult {
  int exit_code = 0;
  bool rank_failed = false;  // a rank failed on its own, not after a signal to the launcher
  bool stopping = false;
  std::chrono::steady_clock::time_point stop_started;
};

// Reaps ranks that ended; the first failure stops the others (SIGTERM now, SIGKILL later).
void reap(std::vector<Rank>& ranks, RunResult& res) {
  for (size_t r = 0; r < ranks.size(); ++r) {
    Rank& rk = ranks[r];
    if (!rk.running) continue;
    int status = 0;
    if (::waitpid(rk.pid, &status, WNOHANG) != rk.pid) continue;
    rk.running = false;
    rk.status = status;
    const int code = exit_code_of(status);
    if (code == 0 || res.stopping) continue;
    res.rank_failed = g_signal == 0;
    res.exit_code = code;
    std::cerr << "nnx-launch: rank " << r << " failed with "
              << (WIFEXITED(status) ? "exit code " + std::to_string(code) : "signal " + std::to_string(WTERMSIG(status)))
              << "; stopping the other ranks\n";
    res.stopping = true;
    res.stop_started = std::chrono::steady_clock::now();
    for (auto& other : ranks)
      if (other.running) ::kill(-other.pid, SIGTERM);
  }
}

// Supervises started ranks until all ended and their output is drained.
RunResult supervise(std::vector<Rank>& ranks, int grace) {
  RunResult res;
  int forwarded = 0;
  while (true) {
    if (g_signal != 0 && g_signal != forwarded) {  // forward a signal to every rank, once per signal
      forwarded = g_signal;
      for (auto& rk : ranks)
        if (rk.running) ::kill(-rk.pid, forwarded);
    }
    pump_output(ranks);
    reap(ranks, res);
    if (res.stopping && std::chrono::steady_clock::now() - res.stop_started > std::chrono::seconds(grace))
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
  if (!res.stopping && g_signal)  // ended by a signal: the exit code of a rank that did not exit 0
    for (auto& rk : ranks)
      if (exit_code_of(rk.status) != 0) res.exit_code = exit_code_of(rk.status);
  return res;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse_args(argc, argv);
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  for (int restart = 0;; ++restart) {
    // A fresh rendezvous port for each start (unless given): the previous one may linger.
    const int port = o.port != 0 ? o.port : free_port();
    std::vector<Rank> ranks(static_cast<size_t>(o.nproc));
    for (int r = 0; r < o.nproc; ++r)
      if (!start_rank(o, r, port, ranks[static_cast<size_t>(r)])) return 1;
    const RunResult res = supervise(ranks, o.grace);
    if (!res.rank_failed || restart >= o.max_restarts || g_signal) return res.exit_code;
    std::cerr << "nnx-launch: restarting all " << o.nproc << " ranks (restart " << restart + 1 << " of "
              << o.max_restarts << ")\n";
  }
}
