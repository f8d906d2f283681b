#include "sdtune/train/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <utility>

#include "sdtune/error.h"

namespace sdtune::train {

const std::vector<std::string>& LrSchedule::names() {
  static const std::vector<std::string> kNames = {"linear",     "cosine",   "cosine_with_restarts",
                                                  "polynomial", "constant", "constant_with_warmup"};
  return kNames;
}

LrSchedule::LrSchedule(std::string name, LrScheduleOptions options)
    : name_(std::move(name)), options_(options) {
  const auto& valid = names();
  if (std::find(valid.begin(), valid.end(), name_) == valid.end()) {
    std::string list;
    for (const auto& n : valid) list += (list.empty() ? "" : ", ") + n;
    throw Error("unknown lr scheduler '" + name_ + "' (valid: " + list + ")");
  }
  if (options_.warmup_steps < 0 || options_.total_steps < 0)
    throw Error("lr scheduler: warmup and total steps must not be negative");
  if (name_ == "polynomial" && !(options_.base_lr > options_.lr_end))
    throw Error("lr scheduler polynomial: lr_end (" + std::to_string(options_.lr_end) +
                ") must be smaller than the initial lr (" + std::to_string(options_.base_lr) + ")");
}

// Each branch is diffusers' lr_lambda with the same operations in the same order, so the doubles
// agree to the last bit (Python's float arithmetic and math.cos/pow are the C library's).
double LrSchedule::multiplier(int64_t step) const {
  const int64_t warmup = options_.warmup_steps, total = options_.total_steps;
  const double s = static_cast<double>(step);
  if (name_ == "constant") return 1.0;
  // Linear warmup from 0 (at step 0) towards 1 (reached at step == warmup).
  const double warm = s / static_cast<double>(std::max<int64_t>(1, warmup));
  if (name_ == "constant_with_warmup") return step < warmup ? warm : 1.0;
  if (step < warmup) return warm;
  const double span = static_cast<double>(std::max<int64_t>(1, total - warmup));
  if (name_ == "linear") {
    // 1 → 0 linearly over (warmup, total], then 0.
    const double progress = static_cast<double>(total - step) / span;
    return 0.0 + (1.0 - 0.0) * std::max(0.0, progress);
  }
  // Fraction of the decay phase done: 0 at the end of warmup, 1 at total_steps.
  const double progress = static_cast<double>(step - warmup) / span;
  if (name_ == "cosine") {
    // Half a cosine period (num_cycles 0.5): ½(1 + cos(π·progress)), from 1 down to 0.
    const double num_cycles = 0.5;
    return std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * num_cycles * 2.0 * progress)));
  }
  if (name_ == "cosine_with_restarts") {
    // num_cycles half-cosines from 1 to 0, each restarting at 1 (hard restarts); 0 after the end.
    if (progress >= 1.0) return 0.0;
    const double phase = std::fmod(static_cast<double>(options_.num_cycles) * progress, 1.0);
    return std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * phase)));
  }
  // polynomial: lr = (lr0 − lr_end)·(1 − progress)^power + lr_end, returned relative to lr0;
  // lr_end once past total_steps.
  const double lr_init = options_.base_lr, lr_end = options_.lr_end;
  if (step > total) return lr_end / lr_init;
  const int64_t decay_steps = total - warmup;
  if (decay_steps == 0)
    throw Error("lr scheduler polynomial: total steps equal warmup steps (division by zero)");
  const double pct_remaining =
      1.0 - static_cast<double>(step - warmup) / static_cast<double>(decay_steps);
  const double decay = (lr_init - lr_end) * std::pow(pct_remaining, options_.power) + lr_end;
  return decay / lr_init;
}

}  // namespace sdtune::train
