#pragma once
// Where a stretch of work spends its time, from PyTorch's own profiler (Kineto) through LibTorch:
// on a CUDA device the kernels' time on the GPU, sorted into what they compute (matmul,
// convolution, attention, normalisation, elementwise, the optimizer's updates, copies), the time
// no kernel ran (launch overhead, host work, waits) and the host's synchronisations; on the CPU
// the operators' self time, sorted the same way. Also writes the Chrome/Perfetto trace.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace sdtune::profile {

// The category of a kernel or operator name: "matmul", "convolution", "attention",
// "normalization", "elementwise", "optimizer", "copy" or "other".
std::string category_of(const std::string& name);

struct CategoryTime {
  std::string category;
  double seconds = 0;
  int64_t count = 0;  // kernels (or operator calls)
};

struct NamedTime {
  std::string name;
  double seconds = 0;
  int64_t count = 0;
};

struct Breakdown {
  // "cuda": kernels on the GPU; "cpu": operators' self time on the host threads.
  std::string timeline;
  double span_seconds = 0;  // the first profiled event's start to the last one's end
  double busy_seconds = 0;  // cuda: the union of the kernels' intervals; cpu: the sum of self times
  double idle_seconds = 0;  // cuda: span − busy (no kernel running); cpu: 0
  std::vector<CategoryTime> categories;  // the largest first
  std::vector<NamedTime> top;            // the 15 names with the most time
  // cuda: the host's waits for the device (cudaStreamSynchronize, cudaDeviceSynchronize,
  // cudaEventSynchronize, blocking cudaMemcpy): each is a point where the launch queue drained.
  int64_t host_syncs = 0;
  double host_sync_seconds = 0;
  int64_t kernel_launches = 0;  // cuda: kernels run

  nlohmann::json to_json() const;
  // A plain-text table: category, milliseconds, share of the busy time, count; then idle and syncs.
  std::string table() const;
};

// Profiles from construction to stop(). One at a time per process.
class Profiler {
 public:
  // `cuda`: record the GPU's kernels too (CUPTI), not only the host's operators.
  explicit Profiler(bool cuda);
  ~Profiler();
  Profiler(const Profiler&) = delete;
  Profiler& operator=(const Profiler&) = delete;

  // Stops, writes the Chrome trace to `trace` unless empty, and sorts the events.
  Breakdown stop(const std::filesystem::path& trace = {});

 private:
  bool cuda_, running_ = true;
};

}  // namespace sdtune::profile
