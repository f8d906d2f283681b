// c10d's Gloo process group. Gloo's headers are not in the torch wheel: they come from Debian's
// libgloo-dev (CMakeLists.txt), whose declarations of the few gloo types that
// ProcessGroupGloo.hpp names match the wheel's build (sizeof(ProcessGroupGloo) is 544 bytes in
// both: libtorch_cpu allocates 0x220 for one in ProcessGroupGloo::split).
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include <cstdlib>
#include <sstream>
#include <string>

#include "backends.h"

namespace sdtune::distributed::backends {

bool gloo_available() {
  return true;
}

c10::intrusive_ptr<c10d::Backend> make_gloo(const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                            int size, std::chrono::milliseconds timeout) {
  auto options = c10d::ProcessGroupGloo::Options::create_default(timeout);
  const char* interfaces = std::getenv("GLOO_SOCKET_IFNAME");
  if (interfaces != nullptr && *interfaces != '\0') {
    options->devices.clear();
    std::stringstream list(interfaces);
    for (std::string name; std::getline(list, name, ',');)
      if (!name.empty())
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(name));
  }
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, size, options);
}

}  // namespace sdtune::distributed::backends
