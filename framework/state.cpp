#include "nnx/framework/state.h"

#include <ATen/ATen.h>

#include <iomanip>
#include <ostream>

#include "nnx/framework/error.h"

namespace nnx {

const NestedState& NestedState::operator[](const std::string& key) const {
  for (size_t i = 0; i < keys.size(); ++i)
    if (keys[i] == key) return children[i];
  NNX_CHECK(false, "nested state has no key '", key, "'");
  return *this;
}

void State::insert(const std::string& path, VariableState vs) {
  NNX_CHECK(!path.empty(), "state paths must be non-empty");
  NNX_CHECK(!contains(path), "duplicate state path '", path, "'");
  index_.emplace(path, entries_.size());
  entries_.emplace_back(path, std::move(vs));
}

void State::set(const std::string& path, VariableState vs) {
  auto it = index_.find(path);
  if (it == index_.end()) {
    insert(path, std::move(vs));
  } else {
    entries_[it->second].second = std::move(vs);
  }
}

bool State::erase(const std::string& path) {
  auto it = index_.find(path);
  if (it == index_.end()) return false;
  entries_.erase(entries_.begin() + static_cast<std::ptrdiff_t>(it->second));
  reindex();
  return true;
}

void State::reindex() {
  index_.clear();
  for (size_t i = 0; i < entries_.size(); ++i) index_.emplace(entries_[i].first, i);
}

VariableState& State::at(const std::string& path) {
  return const_cast<VariableState&>(static_cast<const State*>(this)->at(path));
}

const VariableState& State::at(const std::string& path) const {
  auto it = index_.find(path);
  if (it == index_.end()) {
    std::string near;
    for (const auto& e : entries_) {
      if (split_path(e.first).back() == split_path(path).back()) {
        near = e.first;
        break;
      }
    }
    NNX_CHECK(false, "no variable at path '", path, "' in state of ", size(), " variables",
              near.empty() ? "" : " (did you mean '" + near + "'?)");
  }
  return entries_[it->second].second;
}

std::vector<std::string> State::paths() const {
  std::vector<std::string> out;
  out.reserve(entries_.size());
  for (const auto& e : entries_) out.push_back(e.first);
  return out;
}

State State::filter(const Filter& filter) const {
  State out;
  for (const auto& e : entries_)
    if (filter(e.first, e.second.kind)) out.insert(e.first, e.second);
  return out;
}

std::vector<State> State::split(const std::vector<Filter>& filters) const {
  NNX_CHECK(!filters.empty(), "split needs at least one filter");
  for (size_t i = 0; i + 1 < filters.size(); ++i)
    NNX_CHECK(!filters[i].is_everything(), "Everything() must be the last filter of a split");
  std::vector<State> out(filters.size());
  for (const auto& e : entries_) {
    bool placed = false;
    for (size_t i = 0; i < filters.size() && !placed; ++i) {
      if (filters[i](e.first, e.second.kind)) {
        out[i].insert(e.first, e.second);
        placed = true;
      }
    }
    NNX_CHECK(placed, "variable '", e.first, "' (", e.second.kind.name(),
              ") matches none of the split's filters; add Everything() as the last filter");
  }
  return out;
}

State State::operator|(const State& other) const {
  State out = *this;
  for (const auto& e : other.entries_) out.set(e.first, e.second);
  return out;
}

State State::difference(const State& other) const {
  State out;
  for (const auto& e : entries_)
    if (!other.contains(e.first)) out.insert(e.first, e.second);
  return out;
}

std::string State::first_difference(const State& other) const {
  if (size() != other.size())
    return detail::str("sizes differ: ", size(), " vs ", other.size(), " variables");
  for (size_t i = 0; i < entries_.size(); ++i) {
    const auto& [pa, a] = entries_[i];
    const auto& [pb, b] = other.entries_[i];
    if (pa != pb) return detail::str("path ", i, " differs: '", pa, "' vs '", pb, "'");
    if (a.kind != b.kind)
      return detail::str(pa, ": kind ", a.kind.name(), " vs ", b.kind.name());
    if (a.value.defined() != b.value.defined()) return pa + ": one value is undefined";
    if (!a.value.defined()) continue;
    if (a.value.scalar_type() != b.value.scalar_type())
      return detail::str(pa, ": dtype ", a.value.scalar_type(), " vs ", b.value.scalar_type());
    if (a.value.sizes() != b.value.sizes())
      return detail::str(pa, ": shape ", a.value.sizes(), " vs ", b.value.sizes());
    if (!at::equal(a.value.cpu(), b.value.cpu())) return pa + ": values differ";
  }
  return "";
}

bool State::equal(const State& other) const { return first_difference(other).empty(); }

bool State::allclose(const State& other, double rtol, double atol) const {
  if (size() != other.size()) return false;
  for (size_t i = 0; i < entries_.size(); ++i) {
    const auto& [pa, a] = entries_[i];
    const auto& [pb, b] = other.entries_[i];
    if (pa != pb || a.kind != b.kind || a.value.scalar_type() != b.value.scalar_type() ||
        a.value.sizes() != b.value.sizes())
      return false;
    auto x = a.value.cpu(), y = b.value.cpu();
    if (x.is_floating_point()) {
      if (!at::allclose(x, y, rtol, atol, /*equal_nan=*/true)) return false;
    } else if (!at::equal(x, y)) {
      return false;
    }
  }
  return true;
}

int64_t State::nbytes() const {
  int64_t total = 0;
  for (const auto& e : entries_)
    if (e.second.value.defined()) total += e.second.value.numel() * e.second.value.element_size();
  return total;
}

State State::clone() const {
  State out;
  for (const auto& e : entries_) {
    VariableState vs = e.second;
    if (vs.value.defined()) vs.value = vs.value.detach().clone();
    out.insert(e.first, std::move(vs));
  }
  return out;
}

State State::to(const c10::Device& device) const {
  State out;
  for (const auto& e : entries_) {
    VariableState vs = e.second;
    if (vs.value.defined()) vs.value = vs.value.to(device);
    out.insert(e.first, std::move(vs));
  }
  return out;
}

NestedState State::nested() const {
  NestedState root;
  for (const auto& e : entries_) {
    NestedState* node = &root;
    for (const auto& part : split_path(e.first)) {
      size_t i = 0;
      while (i < node->keys.size() && node->keys[i] != part) ++i;
      if (i == node->keys.size()) {
        node->keys.push_back(part);
        node->children.emplace_back();
      }
      node = &node->children[i];
    }
    node->leaf = e.second;
  }
  return root;
}

namespace {
void flatten(const NestedState& node, const std::string& prefix, State& out) {
  if (node.leaf) out.insert(prefix, *node.leaf);
  for (size_t i = 0; i < node.keys.size(); ++i)
    flatten(node.children[i], prefix.empty() ? node.keys[i] : prefix + "/" + node.keys[i], out);
}
}  // namespace

State State::from_nested(const NestedState& nested) {
  State out;
  flatten(nested, "", out);
  return out;
}

std::string format_bytes(int64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 4) {
    v /= 1024.0;
    ++u;
  }
  std::ostringstream os;
  if (u == 0)
    os << bytes << " B";
  else
    os << std::fixed << std::setprecision(1) << v << " " << units[u];
  return os.str();
}

std::string format_shape(at::IntArrayRef sizes) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < sizes.size(); ++i) os << (i ? ", " : "") << sizes[i];
  os << "]";
  return os.str();
}

std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    size_t pos = path.find('/', start);
    parts.push_back(path.substr(start, pos - start));
    if (pos == std::string::npos) break;
    start = pos + 1;
  }
  return parts;
}

std::string State::to_string() const {
  size_t w_path = 4, w_kind = 4, w_shape = 5;
  std::vector<std::array<std::string, 5>> rows;
  for (const auto& [path, vs] : entries_) {
    std::array<std::string, 5> r;
    r[0] = path;
    r[1] = vs.kind.name();
    if (vs.value.defined()) {
      r[2] = format_shape(vs.value.sizes());
      r[3] = std::string(c10::toString(vs.value.scalar_type()));
      r[4] = format_bytes(vs.value.numel() * vs.value.element_size());
    } else {
      r[2] = "-";
      r[3] = "-";
      r[4] = "-";
    }
    w_path = std::max(w_path, r[0].size());
    w_kind = std::max(w_kind, r[1].size());
    w_shape = std::max(w_shape, r[2].size());
    rows.push_back(std::move(r));
  }
  std::ostringstream os;
  os << "State(" << size() << " variables, " << format_bytes(nbytes()) << ")\n";
  for (const auto& r : rows) {
    os << "  " << std::left << std::setw(static_cast<int>(w_path)) << r[0] << "  "
       << std::setw(static_cast<int>(w_kind)) << r[1] << "  " << std::setw(static_cast<int>(w_shape))
       << r[2] << "  " << std::setw(9) << r[3] << "  " << r[4] << "\n";
  }
  return os.str();
}

std::ostream& operator<<(std::ostream& os, const State& state) { return os << state.to_string(); }

}  // namespace nnx
