// Names of tensor dtypes as NumPy and h5py spell them ("float32", "bfloat16", ...).
#pragma once

#include <c10/core/ScalarType.h>

#include <string>

namespace nnx {

/// "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8",
/// "bool" (NumPy's names; bfloat16 as ml_dtypes spells it). Throws nnx::Error for other dtypes.
std::string dtype_name(at::ScalarType t);
/// Inverse of dtype_name; throws nnx::Error naming the value.
at::ScalarType dtype_from_name(const std::string& name);

}  // namespace nnx
