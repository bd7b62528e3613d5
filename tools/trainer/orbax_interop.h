// Orbax checkpoints of Flax NNX models, crossed through tools/interop/orbax_convert.py (Orbax's
// OCDBT/zarr format has no reader outside orbax-checkpoint, so a Python with it does the reading).
#pragma once

#include <cstdint>
#include <string>

namespace nnx::trainer {

/// The converter script: $NNX_ORBAX_CONVERTER, else <prefix>/share/nnx/orbax_convert.py beside
/// the running program's bin/, else the source tree's tools/interop/orbax_convert.py. Throws
/// nnx::Error when none exists.
std::string orbax_converter();

/// Runs `python` (a Python with orbax-checkpoint, flax's dependencies and safetensors) on the
/// converter: step `step` ("latest" or a number) of the Orbax CheckpointManager directory
/// `orbax_dir` becomes `out` (safetensors, nnx-cpp's names: model/..., opt/...). Returns the
/// step read. Throws nnx::Error with the converter's message when it fails (its stderr is
/// passed through).
int64_t orbax_to_safetensors(const std::string& python, const std::string& orbax_dir, const std::string& step,
                             const std::string& out);

/// The other way: `in` (model/..., opt/mu/..., opt/nu/..., opt/count, nnx-cpp's layouts) becomes
/// step `step` of the Orbax CheckpointManager directory `orbax_dir`, as Composite(model=...,
/// optimizer=...) that StandardRestore(nnx.state(abstract)) restores into a Flax NNX model and
/// nnx.Optimizer(model, optax.adamw(...)). Throws nnx::Error when the converter fails (e.g. the
/// step exists there: Orbax never overwrites one).
void safetensors_to_orbax(const std::string& python, const std::string& in, const std::string& orbax_dir, int64_t step);

}  // namespace nnx::trainer
