// Variable kinds and Variables: the typed, shared state that modules own (Flax NNX's nnx.Variable).
#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <string>

namespace nnx {

/// Per-variable metadata, e.g. {"sharding": "[\"data\",null]"} (a PartitionSpec, framework/sharding.h).
/// Saved with the variable in checkpoints.
using Metadata = std::map<std::string, std::string>;

class Variable;

namespace detail {
struct KindInfo {
  std::string name;
  const KindInfo* parent;
};
}  // namespace detail

/// The kind of a Variable (NNX's Variable subclasses): Param, BatchStat, RngKey, ... .
/// Kinds are interned by name; a kind may have a parent (RngKey and RngCount are RngState),
/// and a filter on the parent matches the children. Declare your own with NNX_DEFINE_KIND.
class Kind {
 public:
  /// Returns the kind named `name`, defining it (with `parent`) on first use; without a parent,
  /// an existing kind is returned as it is. Throws nnx::Error if `name` is empty or was defined
  /// before with another parent.
  static Kind define(const std::string& name, const Kind* parent = nullptr);
  /// The kind named `name`; throws nnx::Error naming it when no such kind was defined.
  static Kind from_name(const std::string& name);

  /// The kind's name, e.g. "Param".
  const std::string& name() const { return info_->name; }
  /// True if this kind is `other` or descends from it.
  bool is_a(const Kind& other) const;
  /// Makes a new Variable of this kind: `nnx::Param(at::zeros({3}))`, like `nnx.Param(x)`. A
  /// Param (or a kind of Param) of floating-point values requires grad: a new tensor sharing
  /// `value`'s storage, with requires_grad set (torch.nn.Parameter's rule); meta values are kept.
  Variable operator()(at::Tensor value, Metadata metadata = {}) const;

  bool operator==(const Kind& o) const { return info_ == o.info_; }
  bool operator!=(const Kind& o) const { return info_ != o.info_; }

 private:
  explicit Kind(const detail::KindInfo* info) : info_(info) {}
  const detail::KindInfo* info_;
};

/// Declares a user-defined variable kind in one line: `NNX_DEFINE_KIND(Lora);` or
/// `NNX_DEFINE_KIND(Lora, &nnx::Param);` to make it a kind of Param.
#define NNX_DEFINE_KIND(Name, ...) inline const ::nnx::Kind Name = ::nnx::Kind::define(#Name, ##__VA_ARGS__)

NNX_DEFINE_KIND(Param);         ///< trainable parameters
NNX_DEFINE_KIND(BatchStat);     ///< BatchNorm running statistics
NNX_DEFINE_KIND(RngState);      ///< parent of RngKey and RngCount
NNX_DEFINE_KIND(RngKey, &RngState);    ///< int64 scalar key of an Rngs stream
NNX_DEFINE_KIND(RngCount, &RngState);  ///< int64 scalar counter of an Rngs stream
NNX_DEFINE_KIND(OptState);      ///< optimizer state: step count, moments
NNX_DEFINE_KIND(Cache);         ///< decoding caches
NNX_DEFINE_KIND(Intermediate);  ///< values sown during a forward pass

/// A shared handle to a tensor with a kind and metadata. Copies of a Variable refer to the same
/// storage slot: two modules holding copies share the variable (weight tying). Replacing the
/// value (set_value) is seen through every copy.
class Variable {
 public:
  /// A null handle; defined() is false.
  Variable() = default;
  /// A new variable of `kind` holding `value` (not copied).
  Variable(Kind kind, at::Tensor value, Metadata metadata = {});

  bool defined() const { return impl_ != nullptr; }
  /// The kind; throws nnx::InternalError on a null handle.
  const Kind& kind() const;
  /// The current tensor (may be undefined for a popped slot).
  const at::Tensor& value() const;
  /// The current tensor, to be written in place (`v.mutable_value().add_(1)`): waits first for
  /// any deferred read of its bytes (a checkpoint's snapshot copy; nnx::prepare_write). Write
  /// state in place through this, not through value(), while asynchronous saves may run.
  const at::Tensor& mutable_value();
  /// Replaces the tensor seen by every holder of this variable. Needs no fence: a pending
  /// snapshot copy keeps reading the replaced tensor, which nobody writes any more.
  void set_value(at::Tensor value);
  /// Changes the kind (used when restoring into an abstract module).
  void set_kind(Kind kind);
  /// The metadata map (sharding and user keys).
  Metadata& metadata();
  const Metadata& metadata() const;
  /// Identity: true when both handles refer to the same variable.
  bool is(const Variable& other) const { return impl_ == other.impl_; }
  /// An opaque identity key (stable while the variable lives).
  const void* id() const { return impl_.get(); }

 private:
  struct Impl {
    Kind kind;
    at::Tensor value;
    Metadata metadata;
  };
  std::shared_ptr<Impl> impl_;
};

}  // namespace nnx
