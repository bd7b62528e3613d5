// Docs.SnippetsCompile: this program links only if every C++ snippet of README.md and docs/
// compiled (doc_snippets.cpp, generated at build time). It checks that the extraction found at
// least MIN snippets, so that a broken extractor cannot pass by finding none.
#include <cstdio>
#include <cstdlib>

extern const int kDocSnippets;

int main(int argc, char** argv) {
  const int min = argc > 1 ? std::atoi(argv[1]) : 1;
  std::printf("%d C++ snippets of the docs compiled (at least %d expected)\n", kDocSnippets, min);
  return kDocSnippets >= min ? 0 : 1;
}
