#pragma once
// The c10d backends that a ProcessGroup is made of, each built in a file of its own: Gloo's
// headers come from Debian's libgloo-dev and NCCL's need CUDA's, and neither may reach the other
// files. A build without one gets its *_unavailable.cpp, whose make_* throws.
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>

namespace sdtune::distributed::backends {

bool gloo_available();
c10::intrusive_ptr<c10d::Backend> make_gloo(const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                            int size, std::chrono::milliseconds timeout);

bool nccl_available();
c10::intrusive_ptr<c10d::Backend> make_nccl(const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                            int size, std::chrono::milliseconds timeout,
                                            c10::Device device);

}  // namespace sdtune::distributed::backends
