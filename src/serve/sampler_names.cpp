#include "sdtune/serve/sampler_names.h"

#include <algorithm>
#include <cctype>

#include "sdtune/error.h"

namespace sdtune::serve {
namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

// Schedulers whose sigmas may be Karras's (make_scheduler refuses the others).
bool has_karras(const std::string& scheduler) {
  return scheduler == "euler" || scheduler == "euler-ancestral" || scheduler == "dpmpp-2m";
}

}  // namespace

const std::vector<Sampler>& a1111_samplers() {
  static const std::vector<Sampler> samplers = {
      {"DPM++ 2M", {"k_dpmpp_2m"}, "dpmpp-2m", false},
      {"DPM++ 2M Karras", {"k_dpmpp_2m_ka"}, "dpmpp-2m", true},
      {"Euler a", {"k_euler_a", "k_euler_ancestral"}, "euler-ancestral", false},
      {"Euler", {"k_euler"}, "euler", false},
      {"DDIM", {"ddim"}, "ddim", false},
      {"PLMS", {"plms"}, "pndm", false},
      {"DDPM", {"ddpm"}, "ddpm", false},
  };
  return samplers;
}

SchedulerChoice choose_scheduler(const std::string& sampler, const std::string& schedule) {
  const std::string want = lower(sampler);
  const Sampler* found = nullptr;
  for (const Sampler& s : a1111_samplers()) {
    if (lower(s.name) == want) found = &s;
    for (const auto& alias : s.aliases)
      if (lower(alias) == want) found = &s;
  }
  if (!found) {
    std::string names;
    for (const Sampler& s : a1111_samplers()) names += (names.empty() ? "" : ", ") + s.name;
    throw Error("unknown sampler '" + sampler + "' (" + names + ")");
  }
  SchedulerChoice c{found->scheduler, found->karras};
  const std::string sched = lower(schedule);
  if (sched == "karras") {
    if (!has_karras(c.scheduler))
      throw Error("the sampler '" + found->name + "' has no Karras schedule");
    c.karras = true;
  } else if (!sched.empty() && sched != "automatic") {
    throw Error("unknown scheduler '" + schedule + "' (Automatic or Karras)");
  }
  return c;
}

}  // namespace sdtune::serve
