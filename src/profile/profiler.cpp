#include "sdtune/profile/profiler.h"

#include <kineto/ActivityType.h>
#include <torch/csrc/autograd/profiler_kineto.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <nlohmann/json.hpp>
#include <utility>

#include "sdtune/error.h"

namespace sdtune::profile {
namespace {

bool has(const std::string& s, const char* part) {
  return s.find(part) != std::string::npos;
}

bool has_any(const std::string& s, std::initializer_list<const char*> parts) {
  for (const char* p : parts)
    if (has(s, p)) return true;
  return false;
}

// An ATen operator's own name without the namespace and the trailing underscore of in-place
// variants: "aten::add_" → "add".
std::string aten_op(const std::string& lower) {
  if (lower.rfind("aten::", 0) != 0) return "";
  std::string op = lower.substr(6);
  if (!op.empty() && op.back() == '_') op.pop_back();
  return op;
}

using Ns = uint64_t;
using Interval = std::pair<Ns, Ns>;

// The length of the union of intervals (kernels on several streams may overlap).
Ns union_length(std::vector<Interval> v) {
  std::sort(v.begin(), v.end());
  Ns total = 0, start = 0, end = 0;
  bool open = false;
  for (const auto& [s, e] : v) {
    if (open && s <= end) {
      end = std::max(end, e);
      continue;
    }
    if (open) total += end - start;
    start = s;
    end = e;
    open = true;
  }
  if (open) total += end - start;
  return total;
}

struct Tally {
  std::map<std::string, CategoryTime> categories;
  std::map<std::string, NamedTime> names;
  void add(const std::string& name, Ns ns) {
    const double s = static_cast<double>(ns) * 1e-9;
    auto& c = categories[category_of(name)];
    c.seconds += s;
    ++c.count;
    auto& n = names[name];
    n.name = name;
    n.seconds += s;
    ++n.count;
  }
  void into(Breakdown& b) const {
    for (const auto& [name, c] : categories) b.categories.push_back({name, c.seconds, c.count});
    std::sort(b.categories.begin(), b.categories.end(),
              [](const auto& x, const auto& y) { return x.seconds > y.seconds; });
    for (const auto& [_, n] : names) b.top.push_back(n);
    std::sort(b.top.begin(), b.top.end(),
              [](const auto& x, const auto& y) { return x.seconds > y.seconds; });
    if (b.top.size() > 15) b.top.resize(15);
  }
};

using torch::autograd::profiler::KinetoEvent;

uint8_t kind(libkineto::ActivityType t) {
  return static_cast<uint8_t>(t);
}

// The GPU timeline: every kernel, copy and memset on the device, and the host's waits.
Breakdown cuda_breakdown(const std::vector<KinetoEvent>& events) {
  Breakdown b;
  b.timeline = "cuda";
  Tally tally;
  std::vector<Interval> busy;
  Ns first = ~Ns{0}, last = 0;
  for (const auto& e : events) {
    const uint8_t t = e.activityType();
    if (t == kind(libkineto::ActivityType::CONCURRENT_KERNEL) ||
        t == kind(libkineto::ActivityType::GPU_MEMCPY) ||
        t == kind(libkineto::ActivityType::GPU_MEMSET)) {
      tally.add(e.name(), e.durationNs());
      busy.emplace_back(e.startNs(), e.endNs());
      if (t == kind(libkineto::ActivityType::CONCURRENT_KERNEL)) ++b.kernel_launches;
    } else if (t == kind(libkineto::ActivityType::CUDA_RUNTIME)) {
      const std::string n = e.name();
      if (n == "cudaStreamSynchronize" || n == "cudaDeviceSynchronize" ||
          n == "cudaEventSynchronize" || n == "cudaMemcpy") {
        ++b.host_syncs;
        b.host_sync_seconds += static_cast<double>(e.durationNs()) * 1e-9;
      }
    } else if (t != kind(libkineto::ActivityType::CPU_OP)) {
      continue;
    }
    first = std::min(first, e.startNs());
    last = std::max(last, e.endNs());
  }
  tally.into(b);
  if (last > first) b.span_seconds = static_cast<double>(last - first) * 1e-9;
  b.busy_seconds = static_cast<double>(union_length(busy)) * 1e-9;
  b.idle_seconds = std::max(0.0, b.span_seconds - b.busy_seconds);
  return b;
}

// The host timeline: each operator's self time (its duration less its direct children's, on the
// same thread), so that aten::linear's time lands on the addmm it calls.
Breakdown cpu_breakdown(const std::vector<KinetoEvent>& events) {
  Breakdown b;
  b.timeline = "cpu";
  std::map<uint64_t, std::vector<const KinetoEvent*>> by_thread;
  for (const auto& e : events)
    if (e.activityType() == kind(libkineto::ActivityType::CPU_OP))
      by_thread[e.startThreadId()].push_back(&e);
  Tally tally;
  Ns first = ~Ns{0}, last = 0;
  for (auto& [_, ops] : by_thread) {
    // Parents before children: by start, the longer first when two start together.
    std::sort(ops.begin(), ops.end(), [](const KinetoEvent* x, const KinetoEvent* y) {
      return x->startNs() != y->startNs() ? x->startNs() < y->startNs()
                                          : x->durationNs() > y->durationNs();
    });
    struct Open {
      const KinetoEvent* e;
      Ns children = 0;
    };
    std::vector<Open> stack;
    auto close = [&](const Open& o) {
      const Ns d = o.e->durationNs();
      tally.add(o.e->name(), d > o.children ? d - o.children : 0);
    };
    for (const KinetoEvent* e : ops) {
      while (!stack.empty() && stack.back().e->endNs() <= e->startNs()) {
        close(stack.back());
        stack.pop_back();
      }
      if (!stack.empty()) stack.back().children += e->durationNs();
      stack.push_back({e});
      first = std::min(first, e->startNs());
      last = std::max(last, e->endNs());
    }
    for (auto it = stack.rbegin(); it != stack.rend(); ++it) close(*it);
  }
  tally.into(b);
  if (last > first) b.span_seconds = static_cast<double>(last - first) * 1e-9;
  for (const auto& c : b.categories) b.busy_seconds += c.seconds;
  return b;
}

}  // namespace

std::string category_of(const std::string& name) {
  // A CUDA kernel's name up to its template arguments ("void at::native::vectorized_elementwise_
  // kernel<4, ...silu...>" → what runs, not the functors and types it was instantiated with).
  std::string s = name.substr(0, name.find('<'));
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  const std::string op = aten_op(s);
  auto op_is = [&](std::initializer_list<const char*> ops) {
    for (const char* o : ops)
      if (op == o) return true;
    return false;
  };
  // The order matters: cuDNN's convolution kernels are implicit GEMMs (fprop/dgrad/wgrad), flash
  // attention computes matmuls, and the optimizer's fused updates are elementwise.
  if (has_any(s, {"memcpy", "memset", "catarraybatchedcopy"}) ||
      op_is({"copy", "to", "_to_copy", "contiguous", "clone", "cat"}))
    return "copy";
  if (has_any(s, {"flash", "fmha", "attention", "sdpa", "scaled_dot_product", "softmax"}))
    return "attention";
  if ((has(s, "conv") && !has(s, "convert")) ||
      has_any(s, {"fprop", "dgrad", "wgrad", "winograd", "im2col", "col2im"}))
    return "convolution";
  if (has_any(s, {"foreach", "multi_tensor", "adam", "adafactor"})) return "optimizer";
  if (has_any(s, {"gemm", "nvjet", "cublas", "xmma", "cutlass", "matmul", "splitk"}) ||
      op_is({"mm", "addmm", "bmm", "baddbmm", "linear"}))
    return "matmul";
  if ((has(s, "norm") && !has(s, "normal")) ||
      has_any(s, {"moments", "fusedparams", "internalgradients", "gammabeta"}))
    return "normalization";
  if (has_any(s, {"elementwise", "vectorized", "unrolled", "reduce_kernel", "upsample", "silu",
                  "gelu", "sigmoid", "mse_loss"}) ||
      op_is({"add",     "sub",     "mul",   "div",   "exp",  "pow",  "sqrt",
             "rsqrt",   "neg",     "where", "clamp", "fill", "zero", "lerp",
             "addcmul", "addcdiv", "mean",  "sum",   "cos",  "sin",  "threshold_backward",
             "randn",   "normal"}))
    return "elementwise";
  return "other";
}

nlohmann::json Breakdown::to_json() const {
  nlohmann::json j = {{"timeline", timeline},
                      {"span_seconds", span_seconds},
                      {"busy_seconds", busy_seconds},
                      {"idle_seconds", idle_seconds},
                      {"host_syncs", host_syncs},
                      {"host_sync_seconds", host_sync_seconds},
                      {"kernel_launches", kernel_launches}};
  for (const auto& c : categories)
    j["categories"].push_back(
        {{"category", c.category}, {"seconds", c.seconds}, {"count", c.count}});
  for (const auto& n : top)
    j["top"].push_back({{"name", n.name}, {"seconds", n.seconds}, {"count", n.count}});
  return j;
}

std::string Breakdown::table() const {
  std::string out;
  char line[256];
  std::snprintf(line, sizeof line, "%-16s %10s %8s %8s   (%s; span %.2f ms)\n", "category", "ms",
                "share", "count", timeline == "cuda" ? "GPU kernel time" : "CPU operator self time",
                span_seconds * 1e3);
  out += line;
  for (const auto& c : categories) {
    std::snprintf(line, sizeof line, "%-16s %10.3f %7.1f%% %8lld\n", c.category.c_str(),
                  c.seconds * 1e3, busy_seconds > 0 ? 100 * c.seconds / busy_seconds : 0.0,
                  static_cast<long long>(c.count));
    out += line;
  }
  if (timeline == "cuda") {
    std::snprintf(line, sizeof line,
                  "%-16s %10.3f %7.1f%% of the span (no kernel running)\n"
                  "kernels %lld; host syncs %lld (%.3f ms waiting)\n",
                  "idle", idle_seconds * 1e3,
                  span_seconds > 0 ? 100 * idle_seconds / span_seconds : 0.0,
                  static_cast<long long>(kernel_launches), static_cast<long long>(host_syncs),
                  host_sync_seconds * 1e3);
    out += line;
  }
  return out;
}

Profiler::Profiler(bool cuda) : cuda_(cuda) {
  namespace impl = torch::profiler::impl;
  namespace ap = torch::autograd::profiler;
  if (ap::isProfilerEnabledInMainThread())
    throw Error("the profiler is already running in this process");
  // Kineto logs an error when it finds no GPU, which a CPU run is not; errors of its own still
  // show with KINETO_LOG_LEVEL set lower.
  setenv("KINETO_LOG_LEVEL", "5", /*overwrite=*/0);
  const impl::ProfilerConfig config(impl::ProfilerState::KINETO);
  std::set<impl::ActivityType> activities{impl::ActivityType::CPU};
  if (cuda_) activities.insert(impl::ActivityType::CUDA);
  ap::prepareProfiler(config, activities);
  ap::enableProfiler(config, activities);
}

Profiler::~Profiler() {
  if (running_) torch::autograd::profiler::disableProfiler();
}

Breakdown Profiler::stop(const std::filesystem::path& trace) {
  if (!running_) throw Error("internal: the profiler was stopped already");
  running_ = false;
  std::unique_ptr<torch::autograd::profiler::ProfilerResult> result =
      torch::autograd::profiler::disableProfiler();
  if (!trace.empty()) {
    if (trace.has_parent_path()) std::filesystem::create_directories(trace.parent_path());
    result->save(trace.string());
  }
  return cuda_ ? cuda_breakdown(result->events()) : cpu_breakdown(result->events());
}

}  // namespace sdtune::profile
