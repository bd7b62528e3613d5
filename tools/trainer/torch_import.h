// Initialising a model's params from a PyTorch state dict (nnx-train --init-from-torch).
#pragma once

#include <string>

#include "nnx/framework/module.h"

namespace nnx::trainer {

/// Loads a torch.save'd state dict and writes its tensors into `model`'s params through
/// `mapping_path`: {"torch.name": "nnx/path"} or {"torch.name": {"path": "nnx/path",
/// "transpose": true}}, plus an optional "ignore": [names]. Every Param must be covered and every
/// tensor mapped or ignored; shapes and dtypes must match. Throws nnx::Error naming the file,
/// the tensor and the path (docs/interop.md).
void load_torch_params(Module& model, const std::string& dict_path, const std::string& mapping_path);

}  // namespace nnx::trainer
