#pragma once
// The ranks of a data-parallel run, joined through PyTorch's own collective engine, c10d (inside
// the torch wheel): a TCP store at MASTER_ADDR:MASTER_PORT for the rendezvous, then the
// collectives of one backend: NCCL between GPUs, Gloo over TCP for CPU tensors (and CUDA ones,
// through host copies). c10d's types stay out of this header.
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "sdtune/distributed/launch_environment.h"

namespace sdtune::distributed {

enum class Backend { Gloo, Nccl };

// "gloo" or "nccl"; anything else is an Error.
Backend parse_backend(const std::string& name);
const char* backend_name(Backend backend);
// Whether this build can make `backend` (NCCL needs a torch with CUDA).
bool backend_available(Backend backend);

class ProcessGroup {
 public:
  // Joins the run that `env` describes; every rank calls it. Rank 0 serves the store, unless
  // torchrun's agent already does (TORCHELASTIC_USE_AGENT_STORE). Gloo binds to the interfaces in
  // GLOO_SOCKET_IFNAME (comma-separated) when set, else to this machine's hostname's address;
  // NCCL binds this rank to `device` (cuda:LOCAL_RANK). Every wait, here and in each collective,
  // ends after `timeout` with an Error (with NCCL, c10d's watchdog ends the process).
  ProcessGroup(const LaunchEnvironment& env, std::chrono::milliseconds timeout,
               Backend backend = Backend::Gloo, c10::Device device = c10::kCPU);
  ~ProcessGroup();
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  int64_t rank() const { return rank_; }
  int64_t size() const { return size_; }
  Backend backend() const { return backend_; }

  // A collective that has been started and not yet waited for.
  class Pending {
   public:
    Pending() = default;
    // Returns when the collective is done; an Error naming this rank when it failed (a rank died
    // or the timeout passed).
    void wait();

   private:
    friend class ProcessGroup;
    std::function<void()> wait_;
  };

  // Starts replacing `tensor` (contiguous) by its sum over the ranks, in place, and returns at
  // once: the backend works while the caller goes on (the backward pass, for gradients).
  // `what` names the collective in errors.
  Pending start_sum(const at::Tensor& tensor, const std::string& what);

  // Each value summed over the ranks (e.g. per-rank losses, for a global mean), in one
  // all-reduce.
  std::vector<double> sum(const std::vector<double>& values);
  double sum(double value) { return sum(std::vector<double>{value})[0]; }

  // Every rank's `tensors` replaced by rank `root`'s.
  void broadcast(const std::vector<at::Tensor>& tensors, int64_t root = 0);

  // Returns when every rank has called it.
  void barrier();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int64_t rank_ = 0, size_ = 1;
  Backend backend_ = Backend::Gloo;
};

}  // namespace sdtune::distributed
