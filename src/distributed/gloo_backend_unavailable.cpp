// Built instead of gloo_backend.cpp when CMake finds no Gloo headers (libgloo-dev).
#include "backends.h"
#include "sdtune/error.h"

namespace sdtune::distributed::backends {

bool gloo_available() {
  return false;
}

c10::intrusive_ptr<c10d::Backend> make_gloo(const c10::intrusive_ptr<c10d::Store>&, int, int,
                                            std::chrono::milliseconds) {
  throw Error(
      "this sdtune was built without the Gloo backend (its headers: apt install libgloo-dev, then "
      "rebuild)");
}

}  // namespace sdtune::distributed::backends
