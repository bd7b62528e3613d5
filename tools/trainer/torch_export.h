// Writing tensors as a file that PyTorch's torch.load opens, its safe loader included.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <utility>
#include <vector>

namespace nnx::trainer {

/// Writes `tensors` (name -> CPU tensor, in order) to `path` in torch.save's zip format: a plain
/// dict of dense tensors whose pickle names only what torch.load(weights_only=True) allows
/// (torch._utils._rebuild_tensor_v2, torch.*Storage, collections.OrderedDict), without the
/// TorchScript type tags (torch.jit._pickle.restore_type_tag) that torch::pickle_save adds and that
/// the safe loader, torch.load's default since PyTorch 2.6, refuses. Replaces `path`. Throws
/// nnx::Error naming the file when it cannot be written.
void save_torch_state_dict(const std::vector<std::pair<std::string, at::Tensor>>& tensors, const std::string& path);

}  // namespace nnx::trainer
