#pragma once
// AUTOMATIC1111's sampler names ("Euler a", "DPM++ 2M Karras", "DDIM", ...) against sdtune's
// schedulers, for the A1111-compatible API: what /sdapi/v1/samplers lists and what a request's
// sampler_name (and A1111 1.9's separate `scheduler`, "Automatic" or "Karras") selects.
#include <string>
#include <vector>

namespace sdtune::serve {

struct Sampler {
  std::string name;                  // A1111's label, as sampler_label writes it into PNGs
  std::vector<std::string> aliases;  // A1111's k-diffusion names ("k_euler_a")
  std::string scheduler;             // sdtune's --scheduler name
  bool karras = false;
};

// Every sampler sdtune serves, in the order A1111 lists them.
const std::vector<Sampler>& a1111_samplers();

struct SchedulerChoice {
  std::string scheduler;
  bool karras = false;
};

// The scheduler for `sampler` (a name or alias, case-insensitive) and `schedule` ("" or
// "Automatic": the sampler's own sigmas; "Karras": Karras sigmas, where the scheduler has them).
// An Error naming the known samplers otherwise.
SchedulerChoice choose_scheduler(const std::string& sampler, const std::string& schedule);

}  // namespace sdtune::serve
