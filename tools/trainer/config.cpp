#include "nnx/trainer/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <functional>
#include <map>
#include <set>

#include "nnx/framework/error.h"
#include "nnx/optim/schedule_types.h"
#include "nnx/trainer/policy_kinds.h"
#include "nnx/trainer/registry.h"

namespace nnx::trainer {

namespace {

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

// " (did you mean 'c'?)" for the candidate nearest to `word` (fewer than 4 edits), else "":
// the one suggestion every config error makes (unknown keys, policies, values).
std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates,
                         const std::function<std::string(const std::string&)>& shown = nullptr) {
  std::string best;
  size_t best_d = 4;
  for (const auto& c : candidates)
    if (const size_t d = edit_distance(word, c); d < best_d) {
      best_d = d;
      best = c;
    }
  return best.empty() ? std::string() : " (did you mean '" + (shown ? shown(best) : best) + "'?)";
}

// Where values came from, for error messages.
struct Source {
  std::string file;
  std::map<std::string, std::string> overrides;  // dotted key -> "k=v"
};

// One YAML mapping being read into a struct; remembers which keys were consumed.
class Section {
 public:
  Section(YAML::Node node, std::string prefix, const Source& src, YAML::Mark mark)
      : node_(std::move(node)), prefix_(std::move(prefix)), src_(src), mark_(mark) {
    if (node_ && !node_.IsNull() && !node_.IsMap()) fail_at(node_, prefix_.empty() ? "the config" : prefix_, " must be a mapping");
  }

  std::string key_path(const std::string& key) const { return prefix_.empty() ? key : prefix_ + "." + key; }

  std::string where(const YAML::Node& n, const std::string& dotted) const {
    auto it = src_.overrides.find(dotted);
    if (it != src_.overrides.end()) return "override '" + it->second + "'";
    for (const auto& [key, text] : src_.overrides)  // inside an overridden list or mapping
      if (dotted.size() > key.size() && dotted.compare(0, key.size(), key) == 0 &&
          (dotted[key.size()] == '.' || dotted[key.size()] == '['))
        return "override '" + text + "'";
    YAML::Mark m = n ? n.Mark() : mark_;
    if (m.line < 0) return src_.file;
    return src_.file + ":" + std::to_string(m.line + 1) + ":" + std::to_string(m.column + 1);
  }

  template <class... Parts>
  [[noreturn]] void fail_at(const YAML::Node& n, const std::string& dotted, const Parts&... parts) const {
    throw Error(where(n, dotted) + ": '" + dotted + "'" + detail::str(parts...));
  }

  bool has(const std::string& key) const { return node_ && node_.IsMap() && node_[key]; }

  YAML::Node raw(const std::string& key) {
    used_.insert(key);
    return node_ && node_.IsMap() ? node_[key] : YAML::Node();
  }

  template <class T>
  T get(const std::string& key, T def) {
    YAML::Node n = raw(key);
    if (!n || n.IsNull()) return def;
    try {
      if constexpr (std::is_same_v<T, bool>) {
        if (!n.IsScalar()) throw YAML::BadConversion(n.Mark());
        return strict_bool(n, key);
      } else if constexpr (std::is_same_v<T, std::vector<int64_t>> || std::is_same_v<T, std::vector<std::string>>) {
        if (!n.IsSequence()) throw YAML::BadConversion(n.Mark());
        return n.as<T>();
      } else {
        if (!n.IsScalar()) throw YAML::BadConversion(n.Mark());
        return n.as<T>();
      }
    } catch (const YAML::BadConversion&) {
      fail_at(n, key_path(key), " must be ", type_name<T>(), ", got ", describe(n));
    }
  }

  // YAML 1.2's booleans only: yaml-cpp also takes YAML 1.1's yes/no/on/off/y/n, which a user
  // may have meant as a string or typed by mistake; those are errors naming what was meant.
  bool strict_bool(const YAML::Node& n, const std::string& key) const {
    const std::string& v = n.Scalar();
    if (v == "true" || v == "True" || v == "TRUE") return true;
    if (v == "false" || v == "False" || v == "FALSE") return false;
    std::string lower(v.size(), ' ');
    std::transform(v.begin(), v.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
    const char* meant = (lower == "yes" || lower == "y" || lower == "on" || lower == "1")   ? " (did you mean true?)"
                        : (lower == "no" || lower == "n" || lower == "off" || lower == "0") ? " (did you mean false?)"
                                                                                           : "";
    fail_at(n, key_path(key), " must be true or false, got '", v, "'", meant);
  }

  template <class T>
  T require(const std::string& key) {
    if (!has(key)) {
      used_.insert(key);
      throw Error(where(node_, prefix_) + ": missing required key '" + key_path(key) + "'");
    }
    return get<T>(key, T{});
  }

  template <class T>
  T in_range(const std::string& key, T def, double lo, double hi) {
    T v = get<T>(key, def);
    if (static_cast<double>(v) < lo || static_cast<double>(v) > hi)
      fail_at(raw(key), key_path(key), " = ", v, " is out of range [", lo, ", ", hi == 1e300 ? std::string("inf") : detail::str(hi), "]");
    return v;
  }

  std::string one_of(const std::string& key, std::string def, const std::vector<std::string>& allowed) {
    std::string v = get<std::string>(key, def);
    if (std::find(allowed.begin(), allowed.end(), v) == allowed.end()) {
      std::string list;
      for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
      fail_at(raw(key), key_path(key), " = '", v, "' is not one of: ", list, did_you_mean(v, allowed));
    }
    return v;
  }

  /// one_of() over an option's table of words: its value.
  template <class E, size_t N>
  E choice(const std::string& key, E def, const EnumName<E> (&names)[N]) {
    std::vector<std::string> allowed;
    for (const auto& n : names) allowed.push_back(n.name);
    const std::string v = one_of(key, name_of(def, names), allowed);
    for (const auto& n : names)
      if (v == n.name) return n.value;
    return def;
  }

  /// A section over `n` (part of this one's node), named `dotted` in errors.
  Section child(const YAML::Node& n, const std::string& dotted) const { return Section(n, dotted, src_, n.Mark()); }

  Section sub(const std::string& key) {
    YAML::Node n = raw(key);
    return Section(n, key_path(key), src_, n ? n.Mark() : mark_);
  }

  // Every key present must have been read.
  void finish() const {
    if (!node_ || !node_.IsMap()) return;
    for (auto it = node_.begin(); it != node_.end(); ++it) {
      if (!it->first.IsScalar())  // a complex key ("? ...", a list or a map as a key)
        fail_at(it->first, prefix_.empty() ? std::string("(top level)") : prefix_,
                ": keys must be plain names, found a ", it->first.IsSequence() ? "list" : it->first.IsMap() ? "map" : "null",
                " used as a key");
      std::string k = it->first.as<std::string>();
      if (used_.count(k)) continue;
      std::string dotted = key_path(k);
      throw Error(where(it->first, dotted) + ": unknown key '" + dotted + "'" +
                  did_you_mean(k, std::vector<std::string>(used_.begin(), used_.end()), [&](const std::string& u) { return key_path(u); }));
    }
  }

 private:
  template <class T>
  static const char* type_name() {
    if constexpr (std::is_same_v<T, bool>) return "true or false";
    else if constexpr (std::is_integral_v<T>) return "an integer";
    else if constexpr (std::is_floating_point_v<T>) return "a number";
    else if constexpr (std::is_same_v<T, std::string>) return "a string";
    else if constexpr (std::is_same_v<T, std::vector<int64_t>>) return "a list of integers";
    else return "a list of strings";
  }
  static std::string describe(const YAML::Node& n) {
    if (n.IsScalar()) return "'" + n.Scalar() + "'";
    if (n.IsSequence()) return "a list";
    if (n.IsMap()) return "a mapping";
    return "nothing";
  }

  YAML::Node node_;
  std::string prefix_;
  const Source& src_;
  YAML::Mark mark_;
  std::set<std::string> used_;
};

void apply_override(YAML::Node& root, const std::string& text, Source& src) {
  auto eq = text.find('=');
  NNX_CHECK(eq != std::string::npos && eq > 0, "override '", text, "' must look like key.path=value");
  std::string key = text.substr(0, eq), value = text.substr(eq + 1);
  YAML::Node v;
  try {
    v = YAML::Load(value);
  } catch (const YAML::Exception& e) {
    NNX_CHECK(false, "override '", text, "': cannot parse the value: ", e.msg);
  }
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    size_t dot = key.find('.', start);
    parts.push_back(key.substr(start, dot - start));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  std::vector<YAML::Node> chain = {root};
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    YAML::Node next = chain.back()[parts[i]];
    if (!next.IsMap()) {
      NNX_CHECK(!next.IsDefined() || next.IsNull(), "override '", text, "': '", parts[i], "' is not a section");
      chain.back()[parts[i]] = YAML::Node(YAML::NodeType::Map);
      next = chain.back()[parts[i]];
    }
    chain.push_back(next);
  }
  chain.back()[parts.back()] = v;
  src.overrides[key] = text;
}

// A registered type's view of one section (model: or data:): Section's checks and errors.
class SectionReader : public OptionReader {
 public:
  explicit SectionReader(Section& s) : s_(s) {}
  int64_t integer(const std::string& key, int64_t def, int64_t lo, int64_t hi) override {
    return s_.in_range<int64_t>(key, def, static_cast<double>(lo), static_cast<double>(hi));
  }
  double number(const std::string& key, double def, double lo, double hi) override { return s_.in_range<double>(key, def, lo, hi); }
  bool boolean(const std::string& key, bool def) override { return s_.get<bool>(key, def); }
  std::string string(const std::string& key, const std::string& def) override { return s_.get<std::string>(key, def); }
  std::string one_of(const std::string& key, const std::string& def, const std::vector<std::string>& allowed) override {
    return s_.one_of(key, def, allowed);
  }
  std::vector<int64_t> integers(const std::string& key, const std::vector<int64_t>& def) override {
    return s_.get<std::vector<int64_t>>(key, def);
  }
  std::vector<std::string> strings(const std::string& key, const std::vector<std::string>& def) override {
    return s_.get<std::vector<std::string>>(key, def);
  }
  [[noreturn]] void fail(const std::string& key, const std::string& message) override {
    s_.fail_at(s_.raw(key), s_.key_path(key), message);
  }

 private:
  Section& s_;
};

std::string join(const std::vector<std::string>& names) {
  std::string list;
  for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
  return list;
}

// One policy entry ({name: value}) of kind E, typed (P); fails naming the entry.
template <class E, class P>
using PolicyValue = std::function<P(Section& entry, const std::string& name, E kind)>;

// checkpoint.save or checkpoint.keep: a non-empty list of one-key mappings, each naming a kind
// of `table` (policy_kinds.h); nullopt when unset.
template <class P, class E, size_t N>
std::optional<std::vector<P>> policy_list(Section& ck, const std::string& key, const EnumName<E> (&table)[N],
                                          const PolicyValue<E, P>& value) {
  const std::vector<std::string> kinds = names_of(table);
  YAML::Node list = ck.raw(key);
  if (!list || list.IsNull()) return std::nullopt;
  const std::string dotted = ck.key_path(key);
  if (!list.IsSequence() || list.size() == 0)
    ck.fail_at(list, dotted, " must be a non-empty list of policies, e.g. [{", kinds[0], ": ...}] (kinds: ", join(kinds), ")");
  std::vector<P> out;
  for (size_t i = 0; i < list.size(); ++i) {
    const YAML::Node item = list[i];
    const std::string at = dotted + "[" + std::to_string(i) + "]";
    if (!item.IsMap() || item.size() != 1 || !item.begin()->first.IsScalar())
      ck.fail_at(item, at, " must be a mapping with one key naming the policy (one of: ", join(kinds), ")");
    const std::string kind = item.begin()->first.Scalar();
    const std::optional<E> k = kind_named(kind, table);
    if (!k) ck.fail_at(item.begin()->first, at, ": unknown policy '", kind, "'", did_you_mean(kind, kinds), "; one of: ", join(kinds));
    Section entry = ck.child(item, at);
    out.push_back(value(entry, kind, *k));
  }
  return out;
}

// A list of steps: non-empty, each >= `lo`.
std::vector<int64_t> step_list(Section& entry, const std::string& kind, int64_t lo) {
  auto steps = entry.get<std::vector<int64_t>>(kind, {});
  if (steps.empty()) entry.fail_at(entry.raw(kind), entry.key_path(kind), " must be a non-empty list of steps");
  for (auto v : steps)
    if (v < lo) entry.fail_at(entry.raw(kind), entry.key_path(kind), " has step ", v, "; steps must be >= ", lo);
  return steps;
}

// `kind: true` (the only value that means something for a policy without parameters).
void must_be_true(Section& entry, const std::string& kind) {
  if (!entry.get<bool>(kind, false)) entry.fail_at(entry.raw(kind), entry.key_path(kind), " must be true (remove the entry to turn it off)");
}

SavePolicyConfig save_policy_value(Section& e, const std::string& kind, SavePolicyKind k) {
  SavePolicyConfig p;
  p.kind = k;
  switch (k) {
    case SavePolicyKind::kFixedInterval: p.interval_steps = e.in_range<int64_t>(kind, 0, 1, 1e12); return p;
    case SavePolicyKind::kSpecificSteps: p.steps = step_list(e, kind, 1); return p;
    case SavePolicyKind::kPreemption:
    case SavePolicyKind::kInitialSave: must_be_true(e, kind); return p;
    case SavePolicyKind::kContinuous: break;
  }
  // continuous: true, or {minimum_interval_steps, minimum_interval_seconds}
  if (e.raw(kind).IsScalar()) {
    must_be_true(e, kind);
    return p;
  }
  Section c = e.sub(kind);
  p.minimum_interval_steps = c.in_range<int64_t>("minimum_interval_steps", 1, 0, 1e12);
  p.minimum_interval_seconds = c.in_range<double>("minimum_interval_seconds", 0.0, 0.0, 1e12);
  c.finish();
  return p;
}

// The metrics nnx-train's records hold, by which checkpoints can be ranked.
const std::vector<std::string> kMetrics = {"eval_loss", "eval_accuracy", "loss"};

// best_n: N, or {n, metric, mode, keep_checkpoints_without_metrics}.
void best_n_value(Section& e, const std::string& kind, const std::string& default_metric, KeepPolicyConfig& p) {
  const std::string metric0 = default_metric.empty() ? "eval_loss" : default_metric;
  if (e.raw(kind).IsScalar()) {
    p.n = e.in_range<int>(kind, 1, 1, 1000000);
    p.metric = metric0;
    p.mode = metric0 == "eval_accuracy" ? "max" : "min";
    return;
  }
  Section b = e.sub(kind);
  p.n = b.in_range<int>("n", 1, 1, 1000000);
  p.metric = b.one_of("metric", metric0, kMetrics);
  p.mode = b.one_of("mode", p.metric == "eval_accuracy" ? "max" : "min", {"min", "max"});
  p.keep_checkpoints_without_metrics = b.get<bool>("keep_checkpoints_without_metrics", true);
  b.finish();
}

KeepPolicyConfig keep_policy_value(Section& e, const std::string& kind, KeepPolicyKind k, const std::string& default_metric) {
  KeepPolicyConfig p;
  p.kind = k;
  switch (k) {
    case KeepPolicyKind::kLatestN: p.n = e.in_range<int>(kind, 0, 1, 1000000); return p;
    case KeepPolicyKind::kEveryNSteps: p.n = e.in_range<int64_t>(kind, 0, 1, 1e12); return p;
    case KeepPolicyKind::kCustomSteps: p.steps = step_list(e, kind, 0); return p;
    case KeepPolicyKind::kBestN: best_n_value(e, kind, default_metric, p); return p;
    case KeepPolicyKind::kEveryNSeconds:
    case KeepPolicyKind::kLatestDurationSeconds: break;
  }
  p.seconds = e.get<double>(kind, 0);
  if (!(p.seconds > 0 && p.seconds <= 1e12))
    e.fail_at(e.raw(kind), e.key_path(kind), " = ", p.seconds, " must be a number of seconds > 0");
  return p;
}

// checkpoint.save and checkpoint.keep; each replaces the flags it would contradict.
void checkpoint_policies(Section& ck, CheckpointConfig& c) {
  auto given = [&](const char* key) { return ck.has(key) && !ck.raw(key).IsNull(); };
  const bool interval_set = given("save_interval_steps"), keep_flags_set = given("max_to_keep") || given("keep_period");
  c.save = policy_list<SavePolicyConfig, SavePolicyKind>(ck, "save", kSavePolicyKinds, save_policy_value);
  if (c.save && interval_set)
    ck.fail_at(ck.raw("save"), "checkpoint.save", " replaces checkpoint.save_interval_steps; set one of them (e.g. {fixed_interval: N} in the list)");
  c.keep = policy_list<KeepPolicyConfig, KeepPolicyKind>(ck, "keep", kKeepPolicyKinds, [&](Section& e, const std::string& kind, KeepPolicyKind k) {
    return keep_policy_value(e, kind, k, c.best_metric);
  });
  if (c.keep && keep_flags_set)
    ck.fail_at(ck.raw("keep"), "checkpoint.keep", " replaces checkpoint.max_to_keep and keep_period; set one or the other (e.g. {latest_n: N} in the list; over a config that sets max_to_keep, add checkpoint.max_to_keep=null)");
}

// Fails on the first top-level key that is not a section or setting of the config, with a
// suggestion (the full check runs at the end; this one comes before any "missing key" error).
void unknown_top_level_keys(const YAML::Node& root, const Source& src) {
  static const std::vector<std::string> known = {"seed",  "device", "threads",  "log_level", "run",
                                                 "model", "data",   "optimizer", "train",    "schedule",
                                                 "eval",  "checkpoint", "distributed", "cudnn"};
  Section top(root, "", src, root.Mark());
  for (auto it = root.begin(); it != root.end(); ++it) {
    if (!it->first.IsScalar()) continue;  // reported by finish()
    const std::string k = it->first.Scalar();
    if (std::find(known.begin(), known.end(), k) != known.end()) continue;
    throw Error(top.where(it->first, k) + ": unknown key '" + k + "'" + did_you_mean(k, known));
  }
}

// checkpoint (and checkpoint.local): the CheckpointManager's flags and policies.
void parse_checkpoint(Section& ck, CheckpointConfig& c) {
  c.save_interval_steps = ck.in_range<int64_t>("save_interval_steps", 500, 1, 1e12);
  c.max_to_keep = ck.in_range<int>("max_to_keep", 3, 1, 1000000);
  c.keep_period = ck.in_range<int64_t>("keep_period", 0, 0, 1e12);
  c.async = ck.get<bool>("async", true);
  std::vector<std::string> best_metrics = kMetrics;
  best_metrics.insert(best_metrics.begin(), "");  // "" = no best tracking
  c.best_metric = ck.one_of("best_metric", "eval_loss", best_metrics);
  c.best_mode = ck.one_of("best_mode", c.best_metric == "eval_accuracy" ? "max" : "min", {"min", "max"});
  c.fallback_to_verified = ck.get<bool>("fallback_to_verified", false);
  c.direct_io = ck.get<bool>("direct_io", true);
  c.snapshot = ck.choice("snapshot", checkpoint::io::SnapshotTiming::kDeferred, kSnapshotTimings);
  c.busy_policy = ck.choice("busy_policy", checkpoint::BusyPolicy::kWait, kBusyPolicies);
  Section local = ck.sub("local");
  c.local.save_interval_steps = local.in_range<int64_t>("save_interval_steps", 0, 0, 1e12);
  c.local.max_to_keep = local.in_range<int>("max_to_keep", 2, 1, 1000);
  c.local.directory = local.get<std::string>("directory", "");
  c.local.async = local.get<bool>("async", true);
  c.local.replicas = local.in_range<int>("replicas", 1, 0, 1000);
  local.finish();
  checkpoint_policies(ck, c);
}

// cudnn: benchmark implies non-deterministic kernels unless told otherwise; both is an error.
CudnnConfig parse_cudnn(Section& cudnn) {
  CudnnConfig c;
  c.benchmark = cudnn.get<bool>("benchmark", false);
  c.deterministic = cudnn.get<bool>("deterministic", !c.benchmark);
  if (c.benchmark && c.deterministic)  // the search picks kernels by their timing
    cudnn.fail_at(cudnn.raw("deterministic"), "cudnn.deterministic", " = true contradicts cudnn.benchmark = true");
  return c;
}

// The YAML file at `path` (an empty file is an empty mapping). Throws nnx::Error naming the file,
// and the line and column of a syntax error.
YAML::Node read_yaml(const std::string& path) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    NNX_CHECK(false, "cannot read config file '", path, "'");
  } catch (const YAML::ParserException& e) {
    NNX_CHECK(false, path, ":", e.mark.line + 1, ":", e.mark.column + 1, ": YAML syntax error: ", e.msg);
  }
  if (root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  NNX_CHECK(root.IsMap(), path, ": the config must be a mapping of sections");
  return root;
}

// data: which dataset, where, and whether it fits model.type (set before).
void parse_data(Section& top, Config& c) {
  Section data = top.sub("data");
  const ModelType& model = model_type(c.model.type);
  c.data.dataset = data.one_of("dataset", model.datasets.empty() ? "fashion_mnist" : model.datasets.front(), dataset_names());
  c.data.root = data.get<std::string>("root", c.data.root);
  c.data.path = data.get<std::string>("path", "");
  c.data.block_size = data.in_range<int64_t>("block_size", 64, 1, 1 << 16);
  c.data.size = data.in_range<int64_t>("size", 2048, 1, 1e9);
  c.data.features = data.in_range<int64_t>("features", 16, 1, 1 << 20);
  c.data.classes = data.in_range<int64_t>("classes", 4, 2, 1 << 20);
  c.data.shuffle = data.get<bool>("shuffle", true);
  c.data.limit = data.in_range<int64_t>("limit", 0, 0, 1e12);
  if (const DatasetType* registered = find_dataset(c.data.dataset); registered && registered->options) {
    SectionReader reader(data);
    c.data.options = registered->options(reader);
  }
  if (c.data.dataset == "text" && c.data.path.empty()) throw Error(c.source + ": missing required key 'data.path' (dataset: text)");
  if (c.model.type == "cnn" && c.data.dataset == "synthetic")  // the built-ins' reason, said
    data.fail_at(data.raw("dataset"), "data.dataset", " = 'synthetic' gives vectors; model.type 'cnn' needs images");
  const auto& fits = model.datasets;
  if (!fits.empty() && std::find(fits.begin(), fits.end(), c.data.dataset) == fits.end())
    data.fail_at(data.raw("dataset"), "data.dataset", " = '", c.data.dataset, "' does not fit model.type '", c.model.type,
                 "' (", c.model.type, " trains on ", join(fits), ")");
  data.finish();
}

void parse_optimizer(Section& top, OptimizerConfig& o) {
  Section opt = top.sub("optimizer");
  o.type = opt.choice("type", OptimizerType::kAdamW, kOptimizerTypes);
  o.learning_rate = opt.in_range<double>("learning_rate", 1e-3, 0.0, 10.0);
  o.beta1 = opt.in_range<double>("beta1", 0.9, 0.0, 0.999999);
  o.beta2 = opt.in_range<double>("beta2", 0.999, 0.0, 0.999999);
  o.eps = opt.in_range<double>("eps", 1e-8, 0.0, 1.0);
  o.weight_decay = opt.in_range<double>("weight_decay", o.type == OptimizerType::kAdamW ? 0.01 : 0.0, 0.0, 10.0);
  o.amsgrad = opt.get<bool>("amsgrad", false);
  o.clip_norm = opt.in_range<double>("clip_norm", 0.0, 0.0, 1e9);
  o.no_decay = opt.get<std::vector<std::string>>("no_decay", {"bias", "scale"});
  opt.finish();
}

void parse_train(Section& top, TrainConfig& t) {
  Section tr = top.sub("train");
  t.max_steps = tr.in_range<int64_t>("max_steps", 1000, 1, 1e12);
  t.batch_size = tr.in_range<int64_t>("batch_size", 64, 1, 1 << 20);
  t.grad_accum_steps = tr.in_range<int64_t>("grad_accum_steps", 1, 1, 4096);
  t.log_every = tr.in_range<int64_t>("log_every", 50, 1, 1e12);
  t.nonfinite = tr.choice("nonfinite", Nonfinite::kSkip, kNonfinite);
  t.autocast = tr.choice("autocast", Autocast::kNone, kAutocast);
  tr.finish();
}

// schedule: decay_steps follows train.max_steps (parsed before) unless given.
void parse_schedule(Section& top, Config& c) {
  Section sch = top.sub("schedule");
  c.schedule.type = sch.one_of("type", "constant", optim::schedule_types());
  c.schedule.warmup_steps = sch.in_range<int64_t>("warmup_steps", 0, 0, 1e12);
  c.schedule.decay_steps = sch.in_range<int64_t>("decay_steps", 0, 0, 1e12);
  c.schedule.end_value = sch.in_range<double>("end_value", 0.0, 0.0, 10.0);
  c.schedule.init_value = sch.in_range<double>("init_value", 0.0, 0.0, 10.0);
  c.schedule.alpha = sch.in_range<double>("alpha", 0.0, 0.0, 1.0);
  c.schedule.gamma = sch.in_range<double>("gamma", 0.1, 0.0, 1.0);
  c.schedule.step_size = sch.in_range<int64_t>("step_size", 1000, 1, 1e12);
  const bool decay_given = c.schedule.decay_steps != 0;
  if (!decay_given) c.schedule.decay_steps = c.train.max_steps;
  if (c.schedule.type == "warmup_cosine" && c.schedule.warmup_steps >= c.schedule.decay_steps) {
    // decay_steps follows train.max_steps unless given: a shortened run (a smoke test with
    // train.max_steps=100) clamps the warmup instead of failing. A decay_steps the config gives
    // is the user's own contradiction: an error.
    if (decay_given)
      sch.fail_at(sch.raw("warmup_steps"), "schedule.warmup_steps", " = ", c.schedule.warmup_steps,
                  " must be below schedule.decay_steps (", c.schedule.decay_steps, ")");
    const int64_t clamped = c.schedule.decay_steps - 1;
    c.warnings.push_back("schedule.warmup_steps = " + std::to_string(c.schedule.warmup_steps) +
                         " is not below schedule.decay_steps (" + std::to_string(c.schedule.decay_steps) +
                         ", from train.max_steps); using " + std::to_string(clamped));
    c.schedule.warmup_steps = clamped;
  }
  sch.finish();
}

// model: its type (a registered one's keys read by the type) and dtype.
void parse_model(Section& top, const YAML::Node& node, ModelConfig& m) {
  Section model = top.sub("model");
  if (!model.has("type"))
    throw Error(model.where(node, "model") + ": missing required key 'model.type' (" + join(model_type_names()) + ")");
  m.type = model.one_of("type", "", model_type_names());
  m.dtype = model.choice("dtype", ParamDType::kFloat32, kParamDTypes);
  if (const ModelType& type = model_type(m.type); type.options) {
    SectionReader reader(model);
    m.options = type.options(reader);
  }
  model.finish();
}

void parse_distributed(Section& top, DistributedConfig& d, const std::string& device, const Config& c) {
  Section dist = top.sub("distributed");
  d.backend = dist.one_of("backend", "auto", {"auto", "gloo", "nccl"});
  if (d.backend == "nccl" && device == "cpu")
    dist.fail_at(dist.raw("backend"), "distributed.backend", " = nccl needs device: cuda (NCCL moves GPU memory only); "
                 "the device is cpu (use gloo or auto)");
  d.timeout_seconds = dist.in_range<int64_t>("timeout_seconds", 300, 1, 86400);
  d.batch_stats = dist.choice("batch_stats", BatchStatsMode::kSync, kBatchStatsModes);
  d.zero_stage = dist.in_range<int64_t>("zero_stage", 0, 0, 3);
  if (d.zero_stage == 2)
    dist.fail_at(dist.raw("zero_stage"), "distributed.zero_stage", " = 2 is not built: 0 (replicated), 1 (optimizer state "
                 "sharded) or 3 (params, gradients and optimizer state sharded)");
  // ZeRO-3 recomputes each unit in backward, where autocast is not on: not combined yet.
  if (d.zero_stage == 3 && (c.train.autocast != Autocast::kNone || c.model.dtype != ParamDType::kFloat32))
    dist.fail_at(dist.raw("zero_stage"), "distributed.zero_stage", " = 3 trains float32 params without autocast only "
                 "(model.dtype: float32, train.autocast: none)");
  d.fsdp_units = dist.get<std::vector<std::string>>("fsdp_units", {});
  if (!d.fsdp_units.empty() && d.zero_stage != 3)
    dist.fail_at(dist.raw("fsdp_units"), "distributed.fsdp_units", " is read with zero_stage: 3 only (zero_stage is ",
                 d.zero_stage, ")");
  d.fsdp_prefetch = dist.get<bool>("fsdp_prefetch", true);
  d.overlap_grad_reduce = dist.get<bool>("overlap_grad_reduce", true);
  dist.finish();
}

}  // namespace

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  Source src;
  src.file = path;
  YAML::Node root = read_yaml(path);
  for (const auto& o : overrides) apply_override(root, o, src);

  Config c;
  c.source = path;
  c.overrides = overrides;
  Section top(root, "", src, root.Mark());
  c.seed = top.in_range<uint64_t>("seed", 0, 0, 1.8e19);
  c.device = top.get<std::string>("device", "cpu");
  if (!(c.device == "cpu" || c.device == "cuda" || c.device.rfind("cuda:", 0) == 0))
    top.fail_at(top.raw("device"), "device", " = '", c.device, "' is not cpu, cuda or cuda:N");
  c.threads = top.in_range<int>("threads", 0, 0, 1024);
  c.log_level = top.one_of("log_level", "info", {"debug", "info", "warning", "error", "off"});
  Section cudnn = top.sub("cudnn");
  c.cudnn = parse_cudnn(cudnn);
  cudnn.finish();

  Section run = top.sub("run");
  c.run_dir = run.get<std::string>("dir", "runs/default");
  if (c.run_dir.empty()) run.fail_at(run.raw("dir"), "run.dir", " must not be empty");
  c.run_dir_origin = run.has("dir") ? run.where(run.raw("dir"), "run.dir") : "the default";
  run.finish();

  unknown_top_level_keys(root, src);  // a typo'd section is named as such, not as a missing key
  parse_model(top, root["model"], c.model);

  parse_data(top, c);
  parse_optimizer(top, c.optimizer);
  parse_train(top, c.train);
  parse_schedule(top, c);

  Section ev = top.sub("eval");
  c.eval.every_steps = ev.in_range<int64_t>("every_steps", 0, 0, 1e12);
  c.eval.batch_size = ev.in_range<int64_t>("batch_size", 1000, 1, 1 << 20);
  c.eval.max_batches = ev.in_range<int64_t>("max_batches", 0, 0, 1e12);
  ev.finish();

  Section ck = top.sub("checkpoint");
  parse_checkpoint(ck, c.checkpoint);
  ck.finish();

  parse_distributed(top, c.distributed, c.device, c);

  top.finish();
  return c;
}

nlohmann::json to_json(const SavePolicyConfig& p) {
  const std::string kind = name_of(p.kind, kSavePolicyKinds);
  switch (p.kind) {
    case SavePolicyKind::kFixedInterval: return {{kind, p.interval_steps}};
    case SavePolicyKind::kSpecificSteps: return {{kind, p.steps}};
    case SavePolicyKind::kPreemption:
    case SavePolicyKind::kInitialSave: return {{kind, true}};
    case SavePolicyKind::kContinuous: break;
  }
  return {{kind, {{"minimum_interval_steps", p.minimum_interval_steps}, {"minimum_interval_seconds", p.minimum_interval_seconds}}}};
}

nlohmann::json to_json(const KeepPolicyConfig& p) {
  const std::string kind = name_of(p.kind, kKeepPolicyKinds);
  switch (p.kind) {
    case KeepPolicyKind::kLatestN:
    case KeepPolicyKind::kEveryNSteps: return {{kind, p.n}};
    case KeepPolicyKind::kCustomSteps: return {{kind, p.steps}};
    case KeepPolicyKind::kEveryNSeconds:
    case KeepPolicyKind::kLatestDurationSeconds: return {{kind, p.seconds}};
    case KeepPolicyKind::kBestN: break;
  }
  return {{kind, {{"n", p.n}, {"metric", p.metric}, {"mode", p.mode},
                  {"keep_checkpoints_without_metrics", p.keep_checkpoints_without_metrics}}}};
}

namespace {
// A policy list as JSON; null when unset.
template <class P>
nlohmann::json policies_json(const std::optional<std::vector<P>>& list) {
  if (!list) return nullptr;
  nlohmann::json out = nlohmann::json::array();
  for (const auto& p : *list) out.push_back(to_json(p));
  return out;
}
}  // namespace

nlohmann::json Config::to_json() const {
  return {
      {"seed", seed}, {"device", device}, {"threads", threads}, {"log_level", log_level}, {"run", {{"dir", run_dir}}},
      {"cudnn", {{"benchmark", cudnn.benchmark}, {"deterministic", cudnn.deterministic}}},
      {"model", [&] { nlohmann::json m = model.options; m["type"] = model.type; m["dtype"] = name_of(model.dtype, kParamDTypes); return m; }()},
      {"data", [&] {
         nlohmann::json d = {{"dataset", data.dataset}, {"root", data.root}, {"path", data.path}, {"block_size", data.block_size},
                             {"size", data.size}, {"features", data.features}, {"classes", data.classes},
                             {"shuffle", data.shuffle}, {"limit", data.limit}};
         if (data.options.is_object()) d.update(data.options);  // a registered dataset's own keys
         return d;
       }()},
      {"optimizer", {{"type", name_of(optimizer.type, kOptimizerTypes)}, {"learning_rate", optimizer.learning_rate}, {"beta1", optimizer.beta1},
                     {"beta2", optimizer.beta2}, {"eps", optimizer.eps}, {"weight_decay", optimizer.weight_decay},
                     {"amsgrad", optimizer.amsgrad}, {"clip_norm", optimizer.clip_norm}, {"no_decay", optimizer.no_decay}}},
      {"schedule", {{"type", schedule.type}, {"warmup_steps", schedule.warmup_steps}, {"decay_steps", schedule.decay_steps},
                    {"end_value", schedule.end_value}, {"init_value", schedule.init_value}, {"alpha", schedule.alpha},
                    {"gamma", schedule.gamma}, {"step_size", schedule.step_size}}},
      {"train", {{"max_steps", train.max_steps}, {"batch_size", train.batch_size},
                 {"grad_accum_steps", train.grad_accum_steps}, {"log_every", train.log_every}, {"nonfinite", name_of(train.nonfinite, kNonfinite)},
                 {"autocast", name_of(train.autocast, kAutocast)}}},
      {"eval", {{"every_steps", eval.every_steps}, {"batch_size", eval.batch_size}, {"max_batches", eval.max_batches}}},
      // A key that checkpoint.save or checkpoint.keep replaces prints as null, so the printed
      // config loads again (giving both is an error).
      {"checkpoint", {{"save_interval_steps", !checkpoint.save ? nlohmann::json(checkpoint.save_interval_steps) : nlohmann::json()},
                      {"max_to_keep", !checkpoint.keep ? nlohmann::json(checkpoint.max_to_keep) : nlohmann::json()},
                      {"keep_period", !checkpoint.keep ? nlohmann::json(checkpoint.keep_period) : nlohmann::json()},
                      {"async", checkpoint.async},
                      {"best_metric", checkpoint.best_metric}, {"best_mode", checkpoint.best_mode},
                      {"fallback_to_verified", checkpoint.fallback_to_verified}, {"direct_io", checkpoint.direct_io},
                      {"local", {{"save_interval_steps", checkpoint.local.save_interval_steps},
                                 {"max_to_keep", checkpoint.local.max_to_keep}, {"directory", checkpoint.local.directory},
                                 {"async", checkpoint.local.async}, {"replicas", checkpoint.local.replicas}}},
                      {"snapshot", name_of(checkpoint.snapshot, kSnapshotTimings)}, {"busy_policy", name_of(checkpoint.busy_policy, kBusyPolicies)},
                      {"save", policies_json(checkpoint.save)}, {"keep", policies_json(checkpoint.keep)}}},
      {"distributed", {{"backend", distributed.backend}, {"timeout_seconds", distributed.timeout_seconds}, {"batch_stats", name_of(distributed.batch_stats, kBatchStatsModes)}, {"zero_stage", distributed.zero_stage},
                       {"fsdp_units", distributed.fsdp_units}, {"fsdp_prefetch", distributed.fsdp_prefetch},
                       {"overlap_grad_reduce", distributed.overlap_grad_reduce}}},
  };
}

namespace {
// "path: old -> new" for each differing leaf; with `into_arrays`, arrays of equal length are
// compared element by element ("path[i]"), else as one value (config lists read better whole).
void diff(const nlohmann::json& a, const nlohmann::json& b, const std::string& prefix, std::vector<std::string>& out,
          bool into_arrays = false) {
  if (into_arrays && a.is_array() && b.is_array() && a.size() == b.size()) {
    for (size_t i = 0; i < a.size(); ++i) diff(a[i], b[i], prefix + "[" + std::to_string(i) + "]", out, true);
  } else if (a.is_object() && b.is_object()) {
    std::set<std::string> keys;
    for (auto it = a.begin(); it != a.end(); ++it) keys.insert(it.key());
    for (auto it = b.begin(); it != b.end(); ++it) keys.insert(it.key());
    for (const auto& k : keys)
      diff(a.contains(k) ? a[k] : nlohmann::json(), b.contains(k) ? b[k] : nlohmann::json(),
           prefix.empty() ? k : prefix + "." + k, out, into_arrays);
  } else if (a != b) {
    out.push_back(prefix + ": " + a.dump() + " -> " + b.dump());
  }
}
bool structural(const std::string& line) {
  return line.rfind("model.", 0) == 0 || line.rfind("data.block_size", 0) == 0 || line.rfind("data.dataset", 0) == 0;
}
}  // namespace

std::vector<std::string> structural_differences(const nlohmann::json& saved, const nlohmann::json& now) {
  std::vector<std::string> all, out;
  diff(saved, now, "", all);
  for (auto& l : all)
    if (structural(l)) out.push_back(l);
  return out;
}

std::vector<std::string> json_differences(const nlohmann::json& a, const nlohmann::json& b) {
  std::vector<std::string> out;
  diff(a, b, "", out, /*into_arrays=*/true);
  return out;
}

std::vector<std::string> other_differences(const nlohmann::json& saved, const nlohmann::json& now) {
  std::vector<std::string> all, out;
  diff(saved, now, "", all);
  for (auto& l : all)
    if (!structural(l)) out.push_back(l);
  return out;
}

}  // namespace nnx::trainer
