// libFuzzer target: whole checkpoint files. Each input is an HDF5 file image opened in memory
// through HDF5's core driver, then read as restore, list and show read it: every item listed,
// every State item read with and without a template (checksums verified), every JSON item read.
// Every input must be read or raise nnx::Error; anything else (a crash inside HDF5, another
// exception type) is a finding. Seeds: tests/fuzz/corpus/checkpoint (real checkpoints).
#include <ATen/ATen.h>

#include <cstdint>
#include <string>

#include "nnx/checkpoint/format/h5_file.h"
#include "nnx/checkpoint/format/json_item.h"
#include "nnx/checkpoint/format/schema.h"
#include "nnx/checkpoint/format/state_reader.h"
#include "nnx/checkpoint/shard_planner.h"
#include "nnx/framework/error.h"

namespace {
using namespace nnx;
using namespace nnx::checkpoint;

// read_state against an abstract template made from what list_item reports (nnx-ckpt verify's way).
void read_templated(const H5File& f, const std::string& item) {
  State templ;
  for (const auto& d : list_item(f, item))
    templ.insert(d.path, VariableState{Kind::define(d.kind),
                                       at::empty(d.shape, at::TensorOptions().dtype(dtype_from_name(d.dtype)).device(at::kMeta)),
                                       {}});
  ReadOptions o;
  o.allow_extra = true;
  read_state(f, item, templ, o);
}

std::string first_rejection;  // of the last input; empty when every part of it was read

template <class F>
void attempt(F&& read) {
  try {
    read();
  } catch (const Error& e) {
    if (first_rejection.empty()) first_rejection = e.what();
  }
}

void read_everything(const H5File& f) {
  for (const auto& item : list_items(f)) {
    attempt([&] { read_templated(f, item); });
    attempt([&] { read_state_untemplated(f, item, /*verify_checksums=*/true); });
  }
  for (const auto& item : list_json_items(f)) attempt([&] { read_json(f, item); });
}
}  // namespace

// For the replay's --require-read (replay_main.cpp): why the last input was not read whole.
extern "C" const char* nnx_fuzz_last_rejection() { return first_rejection.c_str(); }

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  first_rejection.clear();
  attempt([&] { read_everything(H5File::open_image(data, size, "fuzz-input.h5")); });
  return 0;
}
