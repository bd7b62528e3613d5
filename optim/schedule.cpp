#include "nnx/optim/schedule.h"

#include <cmath>

#include "nnx/framework/error.h"

namespace nnx::optim {

Schedule::Schedule(std::function<double(int64_t)> fn, nlohmann::json description)
    : fn_(std::move(fn)), description_(std::move(description)) {}

Schedule::Schedule(double value) : Schedule(constant(value)) {}

Schedule constant(double value) {
  return Schedule([value](int64_t) { return value; }, {{"type", "constant"}, {"value", value}});
}

Schedule linear_warmup(double peak, int64_t warmup, double init) {
  NNX_CHECK(warmup >= 0, "linear_warmup: warmup_steps must be >= 0, got ", warmup);
  return Schedule(
      [=](int64_t s) {
        if (warmup == 0 || s >= warmup) return peak;
        return init + (peak - init) * static_cast<double>(s) / static_cast<double>(warmup);
      },
      {{"type", "linear_warmup"}, {"peak_value", peak}, {"warmup_steps", warmup}, {"init_value", init}});
}

Schedule cosine_decay(double init, int64_t decay_steps, double alpha) {
  NNX_CHECK(decay_steps > 0, "cosine_decay: decay_steps must be > 0, got ", decay_steps);
  return Schedule(
      [=](int64_t s) {
        double t = static_cast<double>(std::min(s, decay_steps)) / static_cast<double>(decay_steps);
        return init * ((1.0 - alpha) * 0.5 * (1.0 + std::cos(M_PI * t)) + alpha);
      },
      {{"type", "cosine_decay"}, {"init_value", init}, {"decay_steps", decay_steps}, {"alpha", alpha}});
}

Schedule warmup_cosine(double peak, int64_t warmup, int64_t decay_steps, double end, double init) {
  NNX_CHECK(warmup >= 0 && decay_steps > warmup, "warmup_cosine: need 0 <= warmup_steps (", warmup,
            ") < decay_steps (", decay_steps, ")");
  return Schedule(
      [=](int64_t s) {
        if (s < warmup) return init + (peak - init) * static_cast<double>(s) / static_cast<double>(warmup);
        double t = static_cast<double>(std::min(s, decay_steps) - warmup) /
                   static_cast<double>(decay_steps - warmup);
        return end + (peak - end) * 0.5 * (1.0 + std::cos(M_PI * t));
      },
      {{"type", "warmup_cosine"}, {"peak_value", peak}, {"warmup_steps", warmup},
       {"decay_steps", decay_steps}, {"end_value", end}, {"init_value", init}});
}

Schedule step_decay(double init, int64_t step_size, double gamma) {
  NNX_CHECK(step_size > 0, "step_decay: step_size must be > 0, got ", step_size);
  return Schedule([=](int64_t s) { return init * std::pow(gamma, static_cast<double>(s / step_size)); },
                  {{"type", "step_decay"}, {"init_value", init}, {"step_size", step_size}, {"gamma", gamma}});
}

Schedule Schedule::from_json(const nlohmann::json& j) {
  NNX_CHECK(j.is_object() && j.contains("type"), "schedule needs a 'type'");
  const std::string type = j.at("type").get<std::string>();
  auto num = [&](const char* key) {
    NNX_CHECK(j.contains(key), "schedule '", type, "' needs '", key, "'");
    return j.at(key).get<double>();
  };
  auto cnt = [&](const char* key) {
    NNX_CHECK(j.contains(key), "schedule '", type, "' needs '", key, "'");
    return j.at(key).get<int64_t>();
  };
  if (type == "constant") return constant(num("value"));
  if (type == "linear_warmup") return linear_warmup(num("peak_value"), cnt("warmup_steps"), j.value("init_value", 0.0));
  if (type == "cosine_decay") return cosine_decay(num("init_value"), cnt("decay_steps"), j.value("alpha", 0.0));
  if (type == "warmup_cosine")
    return warmup_cosine(num("peak_value"), cnt("warmup_steps"), cnt("decay_steps"), j.value("end_value", 0.0),
                         j.value("init_value", 0.0));
  if (type == "step_decay") return step_decay(num("init_value"), cnt("step_size"), num("gamma"));
  std::string known;
  for (const auto& t : schedule_types()) known += (known.empty() ? "" : ", ") + t;
  NNX_CHECK(false, "unknown schedule type '", type, "' (expected ", known, ")");
  return constant(0);
}

}  // namespace nnx::optim
