// The process group: the TCP store of the rendezvous and one c10d backend (backends.h), with the
// few collectives that training needs, each turning c10d's failures into one Error that names the
// rank.
#include "sdtune/distributed/process_group.h"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <cstdlib>
#include <string>

#include "backends.h"
#include "sdtune/error.h"

namespace sdtune::distributed {
namespace {

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : fallback;
}

// c10d's messages go on for lines (stack traces, advice): the first says what happened.
std::string first_line(const std::exception& e) {
  std::string message = e.what();
  if (const auto nl = message.find('\n'); nl != std::string::npos) message.resize(nl);
  return message;
}

std::string failed(int64_t rank, int64_t size, const std::string& what, const std::exception& e) {
  return "rank " + std::to_string(rank) + " of " + std::to_string(size) + ": " + what +
         " failed (another rank died or timed out?): " + first_line(e);
}

}  // namespace

Backend parse_backend(const std::string& name) {
  if (name == "gloo") return Backend::Gloo;
  if (name == "nccl") return Backend::Nccl;
  throw Error("unknown data-parallel backend '" + name + "' (nccl or gloo)");
}

const char* backend_name(Backend backend) {
  return backend == Backend::Nccl ? "nccl" : "gloo";
}

bool backend_available(Backend backend) {
  return backend == Backend::Nccl ? backends::nccl_available() : backends::gloo_available();
}

struct ProcessGroup::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  c10::Device device = c10::kCPU;  // where the collectives' own small tensors live
};

ProcessGroup::ProcessGroup(const LaunchEnvironment& env, std::chrono::milliseconds timeout,
                           Backend backend, c10::Device device)
    : impl_(std::make_unique<Impl>()), rank_(env.rank), size_(env.world_size), backend_(backend) {
  const std::string where = env.master_addr + ":" + std::to_string(env.master_port);
  if (backend == Backend::Nccl && !device.is_cuda())
    throw Error("the NCCL backend joins GPUs: train with --device cuda, or use --ddp-backend gloo");
  try {
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(env.master_port);
    // torchrun's agent serves the store itself and says so; otherwise rank 0 does.
    so.isServer = env.rank == 0 && env_or("TORCHELASTIC_USE_AGENT_STORE", "") != "True";
    so.numWorkers = so.isServer ? std::optional<size_t>(env.world_size) : std::nullopt;
    so.waitWorkers = false;
    so.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
    // A restarted attempt must not read the keys of the one before.
    impl_->store = c10::make_intrusive<c10d::PrefixStore>(
        "/sdtune/attempt_" + env_or("TORCHELASTIC_RESTART_COUNT", "0"), tcp);
    const int rank = static_cast<int>(env.rank), size = static_cast<int>(env.world_size);
    impl_->backend = backend == Backend::Nccl
                         ? backends::make_nccl(impl_->store, rank, size, timeout, device)
                         : backends::make_gloo(impl_->store, rank, size, timeout);
    impl_->device = backend == Backend::Nccl ? device : c10::Device(c10::kCPU);
  } catch (const Error& e) {
    throw Error("rank " + std::to_string(env.rank) + " of " + std::to_string(env.world_size) +
                ": " + e.message());
  } catch (const std::exception& e) {
    throw Error("rank " + std::to_string(env.rank) + " of " + std::to_string(env.world_size) +
                " cannot join the run at " + where + " (" + env.launcher + ", " +
                backend_name(backend) + "): " + first_line(e));
  }
}

ProcessGroup::~ProcessGroup() = default;

void ProcessGroup::Pending::wait() {
  if (wait_) std::exchange(wait_, nullptr)();
}

ProcessGroup::Pending ProcessGroup::start_sum(const at::Tensor& tensor, const std::string& what) {
  Pending p;
  try {
    std::vector<at::Tensor> t{tensor};
    c10::intrusive_ptr<c10d::Work> work = impl_->backend->allreduce(t);
    p.wait_ = [work, what, rank = rank_, size = size_] {
      try {
        work->wait();
      } catch (const std::exception& e) {
        throw Error(failed(rank, size, what, e));
      }
    };
  } catch (const std::exception& e) {
    throw Error(failed(rank_, size_, what, e));
  }
  return p;
}

std::vector<double> ProcessGroup::sum(const std::vector<double>& values) {
  if (values.empty()) return values;
  const at::Tensor t = at::tensor(values, at::kDouble).to(impl_->device);
  start_sum(t, "all-reduce of losses").wait();
  const at::Tensor host = t.cpu();
  const double* p = host.data_ptr<double>();
  return {p, p + values.size()};
}

void ProcessGroup::broadcast(const std::vector<at::Tensor>& tensors, int64_t root) {
  for (const auto& tensor : tensors) {
    std::vector<at::Tensor> t{tensor.is_contiguous() ? tensor : tensor.contiguous()};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    try {
      impl_->backend->broadcast(t, o)->wait();
    } catch (const std::exception& e) {
      throw Error(failed(rank_, size_, "broadcast", e));
    }
    if (!t[0].is_same(tensor)) tensor.copy_(t[0]);
  }
}

void ProcessGroup::barrier() {
  try {
    impl_->backend->barrier()->wait();
  } catch (const std::exception& e) {
    throw Error(failed(rank_, size_, "barrier", e));
  }
}

}  // namespace sdtune::distributed
