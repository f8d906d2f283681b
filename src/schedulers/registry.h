#pragma once
// Constructors of the concrete schedulers, one per file; make_scheduler picks among them.
#include <memory>

#include "sdtune/schedulers/scheduler.h"

namespace sdtune::schedulers {

std::unique_ptr<Scheduler> make_ddpm(SchedulerConfig config);
std::unique_ptr<Scheduler> make_ddim(SchedulerConfig config);
std::unique_ptr<Scheduler> make_pndm(SchedulerConfig config);
std::unique_ptr<Scheduler> make_euler(SchedulerConfig config);
std::unique_ptr<Scheduler> make_euler_ancestral(SchedulerConfig config);
std::unique_ptr<Scheduler> make_dpm_solver_multistep(SchedulerConfig config);

}  // namespace sdtune::schedulers
