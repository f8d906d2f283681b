#pragma once
// The ranks of a data-parallel run, joined through PyTorch's own collective engine, c10d (inside
// the torch wheel): a TCP store at MASTER_ADDR:MASTER_PORT for the rendezvous, then Gloo's
// collectives over TCP for CPU tensors. c10d's types stay out of this header.
#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include <ATen/ATen.h>

#include "sdtune/distributed/launch_environment.h"

namespace sdtune::distributed {

class ProcessGroup {
 public:
  // Joins the run that `env` describes; every rank calls it. Rank 0 serves the store, unless
  // torchrun's agent already does (TORCHELASTIC_USE_AGENT_STORE). Gloo binds to the interfaces in
  // GLOO_SOCKET_IFNAME (comma-separated) when set, else to this machine's hostname's address.
  // Every wait, here and in each collective, ends after `timeout` with an Error.
  ProcessGroup(const LaunchEnvironment& env, std::chrono::milliseconds timeout);
  ~ProcessGroup();
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  int64_t rank() const { return rank_; }
  int64_t size() const { return size_; }

  // Each tensor replaced, in place, by its mean over the ranks (gradients). Tensors of one dtype
  // are packed into flat buckets of about `bucket_bytes`, one all-reduce per bucket, as
  // DistributedDataParallel does; the sum is divided by the world size after the reduction.
  void average(const std::vector<at::Tensor>& tensors, int64_t bucket_bytes = 25 << 20);

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
};

}  // namespace sdtune::distributed
