// Built instead of process_group.cpp when CMake finds no Gloo headers (libgloo-dev): one process
// still trains; joining a data-parallel run is an Error.
#include "sdtune/distributed/process_group.h"
#include "sdtune/error.h"

namespace sdtune::distributed {

struct ProcessGroup::Impl {};

ProcessGroup::ProcessGroup(const LaunchEnvironment& env, std::chrono::milliseconds)
    : rank_(env.rank), size_(env.world_size) {
  throw Error(
      "this sdtune was built without data-parallel training (Gloo headers: apt install "
      "libgloo-dev, then rebuild); launched by " +
      env.launcher + " as rank " + std::to_string(env.rank));
}

ProcessGroup::~ProcessGroup() = default;
void ProcessGroup::average(const std::vector<at::Tensor>&, int64_t) {}
double ProcessGroup::sum(double value) {
  return value;
}
void ProcessGroup::broadcast(const std::vector<at::Tensor>&, int64_t) {}
void ProcessGroup::barrier() {}

}  // namespace sdtune::distributed
