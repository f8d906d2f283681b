#pragma once
// Learning-rate schedules of diffusers.optimization.get_scheduler, as the factor LambdaLR
// multiplies each parameter group's initial lr by. The factor is evaluated on the scheduler's
// step count, which is 0 for the first optimizer step (LambdaLR steps once on construction) and
// rises by one after each optimizer step: optimizer step k (from 0) uses multiplier(k).
#include <cstdint>
#include <string>
#include <vector>

namespace sdtune::train {

struct LrScheduleOptions {
  int64_t warmup_steps = 0;
  int64_t total_steps = 0;  // num_training_steps; unused by constant / constant_with_warmup
  int64_t num_cycles = 1;   // cosine_with_restarts (get_scheduler's default; cosine uses 0.5)
  double power = 1.0;       // polynomial
  double lr_end = 1e-7;     // polynomial
  double base_lr = 0.0;     // polynomial: optimizer.defaults["lr"], the --learning_rate
};

class LrSchedule {
 public:
  // Throws Error for an unknown name (listing the valid ones) and for options the schedule
  // rejects (polynomial with base_lr <= lr_end, as diffusers).
  LrSchedule(std::string name, LrScheduleOptions options);

  // The factor for scheduler step `step` (0 for the first optimizer step).
  double multiplier(int64_t step) const;
  // base_lr · multiplier(step), in double as LambdaLR computes it.
  double lr(double base_lr, int64_t step) const { return base_lr * multiplier(step); }

  const std::string& name() const { return name_; }
  static const std::vector<std::string>& names();

 private:
  std::string name_;
  LrScheduleOptions options_;
};

}  // namespace sdtune::train
