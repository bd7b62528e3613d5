// Host copies of tensors for an asynchronous save (the snapshot), made on the pool.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace nnx::checkpoint::io {

/// Copies tensors into host buffers that a background save can write while the caller goes on
/// changing the originals. copy() returns the buffer at once; the bytes of contiguous CPU
/// tensors are copied by finish(), in 4 MiB pieces on up to 4 pool jobs (the copy is bound by
/// memory bandwidth) with streaming stores; anything else (views, device tensors) is copied by
/// ATen inside copy(). Buffers of a previous snapshot (`reuse`, in copy() order) are reused
/// where dtype and size match, which saves the page faults of fresh allocations; finish()
/// leaves this snapshot's buffers there for the next one.
class HostSnapshot {
 public:
  /// `reuse` may be null (fresh buffers every time).
  explicit HostSnapshot(std::vector<at::Tensor>* reuse);
  /// A host tensor that holds `src`'s values after finish(). Throws nnx::Error for an undefined
  /// or abstract (meta) tensor, naming `where`.
  at::Tensor copy(const at::Tensor& src, const std::string& where);
  /// Runs the queued copies and waits for them. Throws what a copy threw.
  void finish();

 private:
  struct Piece {
    char* dst;
    const char* src;
    size_t n;
  };
  std::vector<at::Tensor>* reuse_;
  size_t next_ = 0;
  std::vector<at::Tensor> used_;
  std::vector<Piece> pieces_;
};

/// A host tensor for a snapshot. One of 1 MiB or more gets a mapping of its own (page-aligned,
/// so the direct write path writes it without staging), marked for transparent huge pages where
/// the kernel allows. Throws std::bad_alloc.
at::Tensor host_buffer(at::IntArrayRef sizes, at::ScalarType dtype);

}  // namespace nnx::checkpoint::io
