#include "nnx/framework/variable.h"

#include <mutex>
#include <unordered_map>

#include "nnx/framework/error.h"
#include "nnx/framework/write_fence.h"

namespace nnx {
namespace {
struct KindTable {
  std::mutex mu;
  std::unordered_map<std::string, std::unique_ptr<detail::KindInfo>> kinds;
};
KindTable& table() {
  static KindTable* t = new KindTable();  // never destroyed: kinds outlive static destructors
  return *t;
}
}  // namespace

Kind Kind::define(const std::string& name, const Kind* parent) {
  NNX_CHECK(!name.empty(), "a variable kind needs a non-empty name");
  auto& t = table();
  std::lock_guard<std::mutex> lock(t.mu);
  const detail::KindInfo* parent_info = parent ? parent->info_ : nullptr;
  auto it = t.kinds.find(name);
  if (it != t.kinds.end()) {
    NNX_CHECK(parent_info == nullptr || it->second->parent == parent_info, "variable kind '", name,
              "' defined twice with different parents");
    return Kind(it->second.get());
  }
  auto info = std::make_unique<detail::KindInfo>(detail::KindInfo{name, parent_info});
  const detail::KindInfo* raw = info.get();
  t.kinds.emplace(name, std::move(info));
  return Kind(raw);
}

Kind Kind::from_name(const std::string& name) {
  auto& t = table();
  std::lock_guard<std::mutex> lock(t.mu);
  auto it = t.kinds.find(name);
  NNX_CHECK(it != t.kinds.end(), "unknown variable kind '", name,
            "' (define it with NNX_DEFINE_KIND before restoring)");
  return Kind(it->second.get());
}

bool Kind::is_a(const Kind& other) const {
  for (const detail::KindInfo* k = info_; k != nullptr; k = k->parent) {
    if (k == other.info_) return true;
  }
  return false;
}

Variable Kind::operator()(at::Tensor value, Metadata metadata) const {
  // A Param is trainable, as in Flax: a floating-point value gets requires_grad (on a tensor of
  // its own sharing the storage, as torch.nn.Parameter does), so modules need not set it.
  if (is_a(Param) && value.defined() && !value.is_meta() && value.is_floating_point() && !value.requires_grad())
    value = value.detach().requires_grad_(true);
  return Variable(*this, std::move(value), std::move(metadata));
}

Variable::Variable(Kind kind, at::Tensor value, Metadata metadata)
    : impl_(std::make_shared<Impl>(Impl{kind, std::move(value), std::move(metadata)})) {}

const Kind& Variable::kind() const {
  NNX_INTERNAL_ASSERT(impl_, "null Variable");
  return impl_->kind;
}
const at::Tensor& Variable::value() const {
  NNX_INTERNAL_ASSERT(impl_, "null Variable");
  return impl_->value;
}
const at::Tensor& Variable::mutable_value() {
  NNX_INTERNAL_ASSERT(impl_, "null Variable");
  prepare_write(impl_->value);
  return impl_->value;
}
void Variable::set_value(at::Tensor value) {
  NNX_INTERNAL_ASSERT(impl_, "null Variable");
  impl_->value = std::move(value);
}
void Variable::set_kind(Kind kind) {
  NNX_INTERNAL_ASSERT(impl_, "null Variable");
  impl_->kind = kind;
}
Metadata& Variable::metadata() {
  NNX_INTERNAL_ASSERT(impl_, "null Variable");
  return impl_->metadata;
}
const Metadata& Variable::metadata() const {
  NNX_INTERNAL_ASSERT(impl_, "null Variable");
  return impl_->metadata;
}

}  // namespace nnx
