// c10d's NCCL process group, in libtorch_cuda. Its header needs NCCL's and CUDA's headers: the
// torch wheel's own nvidia-nccl and nvidia-cuda packages supply them (CMakeLists.txt), so the
// declarations match the build of the library (sizeof(ProcessGroupNCCL) is 1184 bytes here and in
// the 2.15 wheel, whose ProcessGroupNCCL::split allocates 0x4a0; Options 280 = 0x118).
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include "backends.h"

namespace sdtune::distributed::backends {

bool nccl_available() {
  return true;
}

c10::intrusive_ptr<c10d::Backend> make_nccl(const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                            int size, std::chrono::milliseconds timeout,
                                            c10::Device device) {
  auto options = c10d::ProcessGroupNCCL::Options::create();
  options->timeout = timeout;
  auto nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, size, options);
  // This rank's GPU, known up front: the communicator is made for it (not guessed from the rank)
  // and the barrier runs on it.
  nccl->setBoundDeviceId(device);
  nccl->eagerConnectSingleDevice(device);  // a rank that cannot connect fails here, named
  return nccl;
}

}  // namespace sdtune::distributed::backends
