#include "nnx/trainer/orbax_interop.h"

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "nnx/framework/error.h"

namespace nnx::trainer {

namespace {

std::string shell_quoted(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

}  // namespace

std::string orbax_converter() {
  namespace stdfs = std::filesystem;
  if (const char* env = std::getenv("NNX_ORBAX_CONVERTER")) {
    NNX_CHECK(stdfs::exists(env), "NNX_ORBAX_CONVERTER='", env, "' does not exist");
    return env;
  }
  std::error_code ec;
  const stdfs::path exe = stdfs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const stdfs::path installed = exe.parent_path().parent_path() / "share" / "nnx" / "orbax_convert.py";
    if (stdfs::exists(installed)) return installed.string();
  }
  const stdfs::path source = stdfs::path(NNX_SOURCE_DIR) / "tools" / "interop" / "orbax_convert.py";
  NNX_CHECK(stdfs::exists(source), "orbax_convert.py not found (neither installed under share/nnx nor at ", source.string(),
            "); set NNX_ORBAX_CONVERTER");
  return source.string();
}

namespace {

// Runs the converter with `args`; returns what it printed (stderr passes through).
std::string run_converter(const std::string& python, const std::string& args, const std::string& what) {
  const std::string cmd = shell_quoted(python) + " " + shell_quoted(orbax_converter()) + " " + args;
  FILE* p = ::popen(cmd.c_str(), "r");
  NNX_CHECK(p != nullptr, "cannot run ", python);
  std::string printed;
  std::array<char, 256> buf{};
  while (std::fgets(buf.data(), buf.size(), p)) printed += buf.data();
  const int status = ::pclose(p);
  NNX_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, what, " failed (", python, " ", orbax_converter(), " exited ",
            WIFEXITED(status) ? WEXITSTATUS(status) : -1,
            "; its message is above; the Python needs orbax-checkpoint and safetensors: tools/setup-interop.sh)");
  return printed;
}

}  // namespace

int64_t orbax_to_safetensors(const std::string& python, const std::string& orbax_dir, const std::string& step,
                             const std::string& out) {
  const std::string printed = run_converter(
      python, "to-safetensors " + shell_quoted(orbax_dir) + " " + shell_quoted(step) + " " + shell_quoted(out),
      "reading the Orbax checkpoint '" + orbax_dir + "'");
  try {
    return std::stoll(printed);
  } catch (const std::exception&) {
    NNX_CHECK(false, "the Orbax converter printed '", printed, "', not a step");
  }
  return -1;
}

void safetensors_to_orbax(const std::string& python, const std::string& in, const std::string& orbax_dir, int64_t step) {
  run_converter(python, "from-safetensors " + shell_quoted(in) + " " + shell_quoted(orbax_dir) + " " + std::to_string(step),
                "writing the Orbax checkpoint '" + orbax_dir + "'");
}

}  // namespace nnx::trainer
