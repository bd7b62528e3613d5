#include "nnx/framework/filter.h"

#include <regex>
#include <set>

#include "nnx/framework/error.h"

namespace nnx {

Filter::Filter(Fn fn, std::string description, bool is_everything)
    : fn_(std::move(fn)), description_(std::move(description)), is_everything_(is_everything) {}

Filter::Filter(const Kind& kind)
    : fn_([kind](const std::string&, const Kind& k) { return k.is_a(kind); }),
      description_(kind.name()),
      is_everything_(false) {}

Filter Everything() {
  return Filter([](const std::string&, const Kind&) { return true; }, "Everything", true);
}

Filter Nothing() {
  return Filter([](const std::string&, const Kind&) { return false; }, "Nothing");
}

Filter PathContains(const std::string& part) {
  NNX_CHECK(!part.empty(), "PathContains needs a non-empty path part");
  return Filter(
      [part](const std::string& path, const Kind&) {
        // Component-aligned match: "/a/b/" contains "/part/".
        std::string p = "/" + path + "/";
        return p.find("/" + part + "/") != std::string::npos;
      },
      "PathContains(" + part + ")");
}

Filter PathRegex(const std::string& pattern) {
  std::shared_ptr<std::regex> re;
  try {
    re = std::make_shared<std::regex>(pattern);
  } catch (const std::regex_error& e) {
    NNX_CHECK(false, "invalid path regex '", pattern, "': ", e.what());
  }
  return Filter([re](const std::string& path, const Kind&) { return std::regex_search(path, *re); },
                "PathRegex(" + pattern + ")");
}

Filter PathIn(std::vector<std::string> paths) {
  auto set = std::make_shared<std::set<std::string>>(paths.begin(), paths.end());
  std::string desc = "PathIn(";
  for (size_t i = 0; i < paths.size(); ++i) desc += (i ? ", " : "") + paths[i];
  return Filter([set](const std::string& path, const Kind&) { return set->count(path) > 0; },
                desc + ")");
}

namespace {
std::string join_descriptions(const char* name, const std::vector<Filter>& fs) {
  std::string d = std::string(name) + "(";
  for (size_t i = 0; i < fs.size(); ++i) d += (i ? ", " : "") + fs[i].description();
  return d + ")";
}
}  // namespace

Filter All(std::vector<Filter> filters) {
  std::string desc = join_descriptions("All", filters);
  return Filter(
      [fs = std::move(filters)](const std::string& p, const Kind& k) {
        for (const auto& f : fs)
          if (!f(p, k)) return false;
        return true;
      },
      desc);
}

Filter Any(std::vector<Filter> filters) {
  std::string desc = join_descriptions("Any", filters);
  return Filter(
      [fs = std::move(filters)](const std::string& p, const Kind& k) {
        for (const auto& f : fs)
          if (f(p, k)) return true;
        return false;
      },
      desc);
}

Filter Not(Filter filter) {
  std::string desc = "Not(" + filter.description() + ")";
  return Filter([f = std::move(filter)](const std::string& p, const Kind& k) { return !f(p, k); },
                desc);
}

}  // namespace nnx
