// Test driver: joins the data-parallel run its launcher describes (torchrun, mpirun or srun
// variables; distributed::launch_environment) and runs each collective of
// distributed::ProcessGroup on rank-dependent tensors, writing what it got to OUT_DIR/rank-N.json
// for tests/distributed/test_process_group.py to check against the expected means and sums.
// Gradients go through distributed::GradientReducer: leaf tensors whose backward pass gives them
// rank-dependent gradients (one of them gets none), averaged as the backward pass finishes them.
//
//   sdtune_collectives_check --out-dir DIR [--timeout-ms T] [--bucket-bytes B] [--die-rank R]
//
// With --die-rank R, rank R exits (status 3) right after joining, before any collective: the
// others must then fail with an error, not hang.
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "driver.h"
#include "sdtune/distributed/gradient_reducer.h"
#include "sdtune/distributed/launch_environment.h"
#include "sdtune/distributed/process_group.h"
#include "sdtune/error.h"

namespace {

namespace dist = sdtune::distributed;

std::vector<double> values(const at::Tensor& t) {
  const at::Tensor d = t.to(at::kDouble).contiguous().reshape(-1);
  return {d.data_ptr<double>(), d.data_ptr<double>() + d.numel()};
}

}  // namespace

int main(int argc, char** argv) {
  std::string out_dir;
  int64_t timeout_ms = 60000, bucket_bytes = 25 << 20, die_rank = -1;
  return sdtune::driver::run_driver(
      argc, argv, "Runs each collective of a c10d process group",
      [&](CLI::App& app) {
        app.add_option("--out-dir", out_dir, "Where rank-N.json goes")->required();
        app.add_option("--timeout-ms", timeout_ms, "Collective timeout")->capture_default_str();
        app.add_option("--bucket-bytes", bucket_bytes, "All-reduce bucket size")
            ->capture_default_str();
        app.add_option("--die-rank", die_rank, "This rank exits after joining");
      },
      [&] {
        const dist::LaunchEnvironment env = dist::launch_environment();
        dist::ProcessGroup group(env, std::chrono::milliseconds(timeout_ms));
        if (group.rank() == die_rank) ::_exit(3);
        const double r = static_cast<double>(group.rank());
        // Two float32 tensors, a float64 one and a bfloat16 one (buckets split at dtypes), after
        // a float32 one that the loss does not use (no gradient, on any rank). Buckets run over
        // the tensors in reverse, so only the last bucket waits for finish().
        const std::vector<at::Tensor> want{at::arange(12, at::kFloat).reshape({3, 4}) * (r + 1),
                                           at::full({5}, 10 * (r + 1), at::kFloat),
                                           at::full({2}, r, at::kDouble),
                                           at::full({4}, r + 1, at::kBFloat16)};
        std::vector<at::Tensor> params{at::zeros({3}, at::kFloat).requires_grad_()};
        for (const auto& w : want) params.push_back(at::zeros_like(w).requires_grad_());
        dist::GradientReducer reducer(group, params, bucket_bytes);
        // Two backward passes, as with gradient accumulation: the first only accumulates (its
        // gradients are this rank's values too, so .grad holds twice them), the armed second
        // one sends them. d(sum(p * w))/dp = w.
        auto backward = [&] {
          at::Tensor loss = at::zeros({}, at::kDouble);
          for (size_t i = 0; i < want.size(); ++i)
            loss = loss + (params[i + 1] * want[i]).sum().to(at::kDouble);
          loss.backward();
        };
        backward();
        reducer.arm();
        backward();
        reducer.finish();
        std::vector<at::Tensor> grads;
        for (size_t i = 0; i < want.size(); ++i) grads.push_back(params[i + 1].grad() / 2);
        const double sum = group.sum(r + 0.5);
        std::vector<at::Tensor> from_root{at::full({3}, 7 * r, at::kFloat)};
        group.broadcast(from_root, group.size() - 1);
        group.barrier();
        nlohmann::json out = {{"rank", group.rank()},
                              {"world_size", group.size()},
                              {"local_rank", env.local_rank},
                              {"launcher", env.launcher},
                              {"sum", sum},
                              {"broadcast", values(from_root[0])},
                              {"buckets", reducer.buckets()},
                              {"started_in_backward", reducer.started_in_backward()},
                              {"unused_has_grad", params.front().grad().defined()}};
        for (const auto& g : grads) out["averaged"].push_back(values(g));
        std::ofstream(out_dir + "/rank-" + std::to_string(group.rank()) + ".json") << out.dump();
      });
}
