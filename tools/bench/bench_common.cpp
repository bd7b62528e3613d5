#include "bench_common.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iomanip>
#include <random>
#include <sstream>

namespace nnx::bench {

std::vector<Row> rows;

double secs_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(q * static_cast<double>(v.size() - 1) + 0.5)];
}

std::string fmt(double v, const char* unit, int prec) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(prec) << v << unit;
  return os.str();
}

void add(const std::string& name, double ours, double anchor, const std::string& unit, const std::string& anchor_name,
         double target, bool lower_is_better) {
  double ratio = ours / anchor;
  bool ok = lower_is_better ? ratio <= target : ratio >= target;
  rows.push_back({name, fmt(ours, unit.c_str()), anchor_name + " " + fmt(anchor, unit.c_str()), fmt(ratio, "", 3),
                  target > 0 ? (lower_is_better ? "<= " : ">= ") + fmt(target, "", 2) : "reported",
                  target > 0 ? (ok ? "ok" : "MISSED") : ""});
}

// A row from alternating rounds: medians of each contender and the median of per-round ratios.
void add_rounds(const std::string& name, const std::vector<double>& ours, const std::vector<double>& anchor,
                const std::string& unit, const std::string& anchor_name, double target) {
  std::vector<double> r;
  for (size_t i = 0; i < ours.size(); ++i) r.push_back(ours[i] / anchor[i]);
  const double ratio = median(r);
  rows.push_back({name, fmt(median(ours), unit.c_str()), anchor_name + " " + fmt(median(anchor), unit.c_str()),
                  fmt(ratio, "", 3) + (ours.size() > 1 ? " (median of " + std::to_string(ours.size()) + " rounds)" : std::string()),
                  target > 0 ? "<= " + fmt(target, "", 2) : "reported", target > 0 ? (ratio <= target ? "ok" : "MISSED") : ""});
}

int64_t rss_kb(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(field, 0) == 0) return std::stoll(line.substr(std::string(field).size()));
  return -1;
}

void fsync_file(const std::string& p) {
  int fd = ::open(p.c_str(), O_RDONLY);
  ::fsync(fd);
  ::close(fd);
}

std::string run_capture(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  ::pclose(p);
  return out;
}

// The anchor of the save rows: the tensors' bytes written one after another, then fsync.
void write_raw_fsync(const stdfs::path& p, const std::vector<at::Tensor>& tensors) {
  int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  for (auto& t : tensors) {
    const char* b = static_cast<const char*>(t.data_ptr());
    size_t len = t.nbytes(), done = 0;
    while (done < len) done += static_cast<size_t>(::write(fd, b + done, len - done));
  }
  ::fsync(fd);
  ::close(fd);
}

State make_state(int n, int64_t numel) {
  State s;
  for (int i = 0; i < n; ++i) s.insert("layer" + std::to_string(i) + "/kernel", {Param, at::randn({numel}), {}});
  return s;
}


// Drops a file from the page cache (its dirty pages written first): the next read is cold.
void evict_from_page_cache(const stdfs::path& f) {
  int fd = ::open(f.c_str(), O_RDONLY);
  if (fd < 0) return;
  ::fdatasync(fd);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
}

// Runs every contender once per round, in a new random order each round (seeded by `seed`, so
// every run draws the same orders): no contender always follows the same one. On the test VM what ran just
// before (its allocations, its page-cache traffic) moved a 30 ms restore by about 10%: with the
// order rotating, "restore" always followed "torch::load" and "without the check" always
// followed "without checksums", and the structure check row read 1.30 and 1.60 (two runs) for a
// check that costs 1.3% when timed alone.
void run_shuffled_rounds(const std::vector<std::function<void()>>& contenders, int rounds, uint32_t seed) {
  std::mt19937 gen(seed);
  std::vector<size_t> order(contenders.size());
  for (size_t k = 0; k < order.size(); ++k) order[k] = k;
  for (int i = 0; i < rounds; ++i) {
    std::shuffle(order.begin(), order.end(), gen);
    for (size_t k : order) contenders[k]();
  }
}

double cpu_seconds() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  auto tv = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec / 1e6; };
  return tv(u.ru_utime) + tv(u.ru_stime);
}

}  // namespace nnx::bench
