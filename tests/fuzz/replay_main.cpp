// Runs a libFuzzer target over corpus files without libFuzzer (any compiler): the regression
// half of fuzzing, part of the default test suite.
// Usage: <target>_replay [--require-read NAME]... FILE_OR_DIR...
// --require-read: the corpus file NAME (a valid seed) must be read whole, which the target reports
// through nnx_fuzz_last_rejection(); otherwise a reader that rejected every input would pass.
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <set>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
// Defined by targets that can tell whether an input was read whole (empty string) or why not.
extern "C" const char* nnx_fuzz_last_rejection() __attribute__((weak));

int main(int argc, char** argv) {
  int n = 0, failed = 0, read_whole = 0;
  std::set<std::string> required, seen;
  std::vector<std::string> inputs;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--require-read" && i + 1 < argc) required.insert(argv[++i]);
    else inputs.emplace_back(argv[i]);
  }
  if (!required.empty() && !nnx_fuzz_last_rejection) {
    std::cerr << "replay: --require-read, but this target does not report rejections\n";
    return 2;
  }
  for (const auto& input : inputs) {
    std::vector<std::filesystem::path> files;
    if (std::filesystem::is_directory(input)) {
      for (const auto& e : std::filesystem::directory_iterator(input)) files.push_back(e.path());
    } else {
      files.emplace_back(input);
    }
    for (const auto& f : files) {
      std::ifstream in(f, std::ios::binary);
      std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
      ++n;
      const std::string name = f.filename().string();
      if (!required.count(name)) continue;
      seen.insert(name);
      const std::string why = nnx_fuzz_last_rejection();
      if (why.empty()) {
        ++read_whole;
      } else {
        std::cerr << "replay: " << f.string() << " is a valid seed, but it was rejected: " << why << "\n";
        ++failed;
      }
    }
  }
  for (const auto& r : required)
    if (!seen.count(r)) {
      std::cerr << "replay: no corpus file named " << r << "\n";
      ++failed;
    }
  std::cout << "replayed " << n << " inputs";
  if (!required.empty()) std::cout << "; " << read_whole << " of " << required.size() << " required seeds read whole";
  std::cout << "\n";
  if (n == 0) std::cerr << "replay: no inputs\n";
  return n > 0 && failed == 0 ? 0 : 1;
}
