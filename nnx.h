// nnx-cpp in one include (as <torch/torch.h> is PyTorch's C++ API): modules, State and the
// graph functions, layers, sharding annotations, the optimizer, and checkpointing (with the
// registry a user's item handler joins).
#pragma once

#include <ATen/ATen.h>  // the tensor library itself, as <torch/torch.h> brings it

#include "nnx/checkpoint/emergency/checkpoint_manager.h"
#include "nnx/checkpoint/handlers/registry.h"
#include "nnx/checkpoint/format/directory.h"
#include "nnx/checkpoint/manager.h"
#include "nnx/checkpoint/verify.h"
#include "nnx/framework/fully_shard.h"
#include "nnx/framework/graph.h"
#include "nnx/framework/layers.h"
#include "nnx/framework/shard_collectives.h"
#include "nnx/framework/sharding.h"
#include "nnx/optim/optimizer.h"
