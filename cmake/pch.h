// Precompiled header shared by every nnx target: the expensive, stable includes.
#pragma once
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>
