// c10d's Gloo process group. Gloo's headers are not in the torch wheel: they come from Debian's
// libgloo-dev (CMakeLists.txt), whose declarations of the few gloo types that
// ProcessGroupGloo.hpp names match the wheel's build (sizeof(ProcessGroupGloo) is 544 bytes in
// both: libtorch_cpu allocates 0x220 for one in ProcessGroupGloo::split).
#include "sdtune/distributed/process_group.h"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <cstdlib>
#include <sstream>
#include <string>

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

// Runs a collective and waits for it; c10d's failures (a rank gone, a timeout) become one Error.
template <typename F>
void collective(const char* what, const ProcessGroup& group, F&& run) {
  try {
    run()->wait();
  } catch (const std::exception& e) {
    throw Error("rank " + std::to_string(group.rank()) + " of " + std::to_string(group.size()) +
                ": " + what + " failed (another rank died or timed out?): " + first_line(e));
  }
}

}  // namespace

struct ProcessGroup::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo;
};

ProcessGroup::ProcessGroup(const LaunchEnvironment& env, std::chrono::milliseconds timeout)
    : impl_(std::make_unique<Impl>()), rank_(env.rank), size_(env.world_size) {
  const std::string where = env.master_addr + ":" + std::to_string(env.master_port);
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

    auto options = c10d::ProcessGroupGloo::Options::create_default(timeout);
    const std::string interfaces = env_or("GLOO_SOCKET_IFNAME", "");
    if (!interfaces.empty()) {
      options->devices.clear();
      std::stringstream list(interfaces);
      for (std::string name; std::getline(list, name, ',');)
        if (!name.empty())
          options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(name));
    }
    impl_->gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(
        impl_->store, static_cast<int>(env.rank), static_cast<int>(env.world_size), options);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error("rank " + std::to_string(env.rank) + " of " + std::to_string(env.world_size) +
                " cannot join the run at " + where + " (" + env.launcher + "): " + first_line(e));
  }
}

ProcessGroup::~ProcessGroup() = default;

void ProcessGroup::average(const std::vector<at::Tensor>& tensors, int64_t bucket_bytes) {
  if (size_ == 1) return;
  // Buckets of one dtype, in the order given; each is packed flat, reduced and unpacked.
  size_t i = 0;
  while (i < tensors.size()) {
    std::vector<at::Tensor> bucket{tensors[i]};
    int64_t bytes = tensors[i].numel() * tensors[i].element_size();
    size_t j = i + 1;
    for (; j < tensors.size() && bytes < bucket_bytes &&
           tensors[j].scalar_type() == tensors[i].scalar_type();
         ++j) {
      bucket.push_back(tensors[j]);
      bytes += tensors[j].numel() * tensors[j].element_size();
    }
    std::vector<at::Tensor> flat{at::cat(
        [&] {
          std::vector<at::Tensor> views;
          for (const auto& t : bucket) views.push_back(t.reshape(-1));
          return views;
        }(),
        0)};
    collective("all-reduce of gradients", *this, [&] { return impl_->gloo->allreduce(flat); });
    flat[0].div_(static_cast<double>(size_));
    int64_t offset = 0;
    for (const auto& t : bucket) {
      t.copy_(flat[0].narrow(0, offset, t.numel()).view_as(t));
      offset += t.numel();
    }
    i = j;
  }
}

std::vector<double> ProcessGroup::sum(const std::vector<double>& values) {
  if (size_ == 1 || values.empty()) return values;
  std::vector<at::Tensor> t{at::tensor(values, at::kDouble)};
  collective("all-reduce of losses", *this, [&] { return impl_->gloo->allreduce(t); });
  const double* p = t[0].data_ptr<double>();
  return {p, p + values.size()};
}

void ProcessGroup::broadcast(const std::vector<at::Tensor>& tensors, int64_t root) {
  if (size_ == 1) return;
  for (const auto& tensor : tensors) {
    std::vector<at::Tensor> t{tensor.is_contiguous() ? tensor : tensor.contiguous()};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    collective("broadcast", *this, [&] { return impl_->gloo->broadcast(t, o); });
    if (!t[0].is_same(tensor)) tensor.copy_(t[0]);
  }
}

void ProcessGroup::barrier() {
  if (size_ == 1) return;
  collective("barrier", *this, [&] { return impl_->gloo->barrier(); });
}

}  // namespace sdtune::distributed
