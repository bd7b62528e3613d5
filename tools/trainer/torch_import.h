// Initialising a model's params from a file of named tensors: a PyTorch state dict or a
// safetensors file (nnx-train --init-from, nnx-ckpt import).
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <utility>
#include <vector>

#include "nnx/framework/module.h"

namespace nnx::optim {
class Optimizer;
}  // namespace nnx::optim

namespace nnx::trainer {

/// The tensors of a file, in its order, and its format's name ("PyTorch", "safetensors").
struct NamedTensors {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  std::string format;
};

/// Reads a torch.save'd dict of tensors (zip or legacy format) or a safetensors file, told
/// apart by their bytes. Throws nnx::Error naming the file (an OrderedDict, which libtorch 1.13
/// cannot read; a safetensors file that fails read_safetensors' checks).
NamedTensors read_named_tensors(const std::string& path);

/// Writes the tensors of `named` (read from `file`) into `model`'s params through
/// `mapping_path`: {"file.name": "nnx/path"} or {"file.name": {"path": "nnx/path",
/// "transpose": true}}, plus an optional "ignore": [names]. Every Param must be covered and every
/// tensor mapped or ignored; shapes and dtypes must match. Throws nnx::Error naming the file,
/// the tensor and the path (docs/interop.md).
void load_params(Module& model, const NamedTensors& named, const std::string& file, const std::string& mapping_path);

/// Whether `named` holds a whole training state (names model/..., opt/...: what
/// tools/interop/orbax_convert.py writes) rather than a state dict to map.
bool is_full_state(const NamedTensors& named);

/// Writes a whole training state into `model` and `optimizer`: "model/<path>" for every Param
/// and BatchStat of the model (RNG state is not carried), and optionally "opt/mu/<path>",
/// "opt/nu/<path>" (every state of the optimizer) and "opt/count". Conv kernels must already be
/// in nnx-cpp's [out, in, kh, kw]. Returns the optimizer's step (0 without optimizer state).
/// Throws nnx::Error naming `file`, the tensor and the nnx-cpp path for a missing, extra, or
/// mis-shaped/-typed tensor; nothing is written into the model or optimizer then.
int64_t load_full_state(Module& model, optim::Optimizer& optimizer, const NamedTensors& named, const std::string& file);

}  // namespace nnx::trainer
