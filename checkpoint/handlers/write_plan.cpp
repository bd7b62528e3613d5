#include "nnx/checkpoint/handlers/write_plan.h"

#include <algorithm>

#include "nnx/framework/error.h"

namespace nnx::checkpoint {

WritePlan WritePlan::balance(const std::vector<std::pair<std::string, std::vector<WriteRequest>>>& items,
                             int world_size) {
  NNX_CHECK(world_size >= 1, "a write plan needs world_size >= 1, got ", world_size);
  struct Balanced {
    std::string key;  // "item/path": the order ties are broken in
    int64_t bytes;
    Writer* writer;
  };
  WritePlan plan;
  std::vector<Balanced> balanced;
  for (const auto& [item, requests] : items) {
    auto& writers = plan.writers_[item];
    for (const auto& r : requests) {
      auto [it, fresh] = writers.emplace(r.path, Writer{r.placement, -1});
      NNX_CHECK(fresh, "item '", item, "' requested the write of '", r.path, "' twice");
      if (r.placement == Placement::kOneRank) balanced.push_back({item + "/" + r.path, r.bytes, &it->second});
    }
  }
  std::sort(balanced.begin(), balanced.end(),
            [](const Balanced& a, const Balanced& b) { return a.bytes != b.bytes ? a.bytes > b.bytes : a.key < b.key; });
  std::vector<int64_t> load(static_cast<size_t>(world_size), 0);
  for (const auto& b : balanced) {
    const auto r = static_cast<size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    load[r] += b.bytes;
    b.writer->rank = static_cast<int>(r);
  }
  return plan;
}

const Writer& WritePlan::at(const std::string& item, const std::string& path) const {
  const auto i = writers_.find(item);
  const auto p = i == writers_.end() ? std::map<std::string, Writer>::const_iterator() : i->second.find(path);
  NNX_CHECK(i != writers_.end() && p != i->second.end(), "the write plan has no writer for '", path, "' of item '",
            item, "' (its handler's plan_writes did not list it)");
  return p->second;
}

std::string WritePlan::digest_text() const {
  std::string text;
  for (const auto& [item, writers] : writers_)
    for (const auto& [path, w] : writers) {
      const std::string who = w.placement == Placement::kOneRank     ? "rank " + std::to_string(w.rank)
                              : w.placement == Placement::kEveryRank ? "every rank"
                                                                     : "checkpoint.h5";
      text += item + "/" + path + "=" + who + ";";
    }
  return text;
}

}  // namespace nnx::checkpoint
