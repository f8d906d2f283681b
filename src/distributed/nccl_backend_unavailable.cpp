// Built instead of nccl_backend.cpp when the torch that sdtune links has no CUDA, or CMake finds
// no nccl.h in the wheel's nvidia-nccl package.
#include "backends.h"
#include "sdtune/error.h"

namespace sdtune::distributed::backends {

bool nccl_available() {
  return false;
}

c10::intrusive_ptr<c10d::Backend> make_nccl(const c10::intrusive_ptr<c10d::Store>&, int, int,
                                            std::chrono::milliseconds, c10::Device) {
  throw Error(
      "this sdtune was built without NCCL (its torch has no CUDA, or no nvidia-nccl headers); "
      "use --ddp-backend gloo");
}

}  // namespace sdtune::distributed::backends
