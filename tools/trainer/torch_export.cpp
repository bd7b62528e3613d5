#include "nnx/trainer/torch_export.h"

#include <ATen/core/Dict.h>
#include <ATen/core/ivalue.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/export.h>
#include <torch/csrc/jit/serialization/pickler.h>

#include <filesystem>

#include "nnx/framework/error.h"

namespace nnx::trainer {

void save_torch_state_dict(const std::vector<std::pair<std::string, at::Tensor>>& tensors, const std::string& path) {
  c10::impl::GenericDict dict(c10::StringType::get(), c10::TensorType::get());
  for (const auto& [name, t] : tensors) dict.insert(name, t.contiguous());
  std::vector<char> pickle;
  // The last argument, tag_aggregates = false: no restore_type_tag around the dict. Tensors with
  // no tensor table are written as torch.save writes them: _rebuild_tensor_v2 over a storage
  // record of the archive.
  torch::jit::Pickler pickler([&](const char* bytes, size_t n) { pickle.insert(pickle.end(), bytes, bytes + n); },
                              nullptr, nullptr, nullptr, nullptr, /*tag_aggregates=*/false);
  pickler.protocol();
  pickler.pushIValue(c10::IValue(dict));
  pickler.stop();
  // Written beside `path`, then renamed over it: no half-written export under the final name.
  const std::string tmp = path + ".tmp";
  try {
    caffe2::serialize::PyTorchStreamWriter writer(tmp);
    torch::jit::writeArchiveAndTensors("data", pickle.data(), pickle.size(), pickler.tensorData(), writer);
    writer.writeEndOfFile();
  } catch (const std::exception& e) {
    std::error_code ec;
    std::filesystem::remove(tmp, ec);
    const auto* c10 = dynamic_cast<const c10::Error*>(&e);
    NNX_CHECK_IO(false, "cannot write '", path, "': ", c10 ? c10->what_without_backtrace() : e.what());
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  NNX_CHECK_IO(!ec, "cannot write '", path, "': ", ec.message());
}

}  // namespace nnx::trainer
