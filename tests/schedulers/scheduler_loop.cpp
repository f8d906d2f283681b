// Test driver: runs a scheduler's whole sampling loop with a deterministic stand-in for the UNet,
// so that tests/schedulers/test_scheduler_parity.py can compare it with diffusers' scheduler
// running the same loop.
//
//   sdtune_scheduler_loop --config scheduler_config.json --scheduler NAME [--karras] [--eta E]
//       --steps N --seed S --inputs in.safetensors --out out.safetensors [--strength X]
//
// Inputs: `latents` (the initial noise), or with --strength `init` (clean latents, img2img as
// StableDiffusionImg2ImgPipeline). Outputs: `latents` (final) and `timesteps` (float64, those
// the loop visited). All random draws come from one CPU generator seeded with S.
#include <algorithm>
#include <map>
#include <optional>
#include <string>

#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/InferenceMode.h>

#include "driver.h"
#include "sdtune/error.h"
#include "sdtune/io/json_config.h"
#include "sdtune/io/tensor.h"
#include "sdtune/schedulers/scheduler.h"

namespace {

using sdtune::Error;
namespace sched = sdtune::schedulers;

struct Args {
  std::string config, scheduler, inputs, out;
  bool karras = false;
  std::optional<double> eta, strength;
  int64_t steps = 0;
  uint64_t seed = 0;
};

// The stand-in model: 0.9 · x · t/T + 0.1 · sin(3x), smooth and timestep-dependent.
at::Tensor stand_in(const at::Tensor& x, const at::Tensor& t, int64_t num_train_timesteps) {
  at::Tensor tt = t.to(at::kFloat) / num_train_timesteps;
  return 0.9 * x * tt + 0.1 * at::sin(3 * x);
}

at::Tensor input(const std::map<std::string, at::Tensor>& in, const std::string& file,
                 const std::string& name) {
  auto it = in.find(name);
  if (it == in.end()) throw Error("missing input tensor", file, name);
  return it->second.to(at::kFloat);
}

void run(const Args& a) {
  auto config = sched::SchedulerConfig::from_json(sdtune::io::JsonConfig::load(a.config));
  const bool ddim = sched::resolve_scheduler_name(a.scheduler, config) == "ddim";
  auto scheduler = sched::make_scheduler(a.scheduler, std::move(config), a.karras);
  if (a.eta) {
    if (!ddim) throw Error("--eta applies to ddim only");
    scheduler->set_eta(*a.eta);
  }
  const int64_t train = scheduler->config().num_train_timesteps;
  const auto in = sdtune::io::read_tensors(a.inputs);
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(a.seed);

  scheduler->set_timesteps(a.steps);
  at::Tensor timesteps = scheduler->timesteps();
  at::Tensor latents;
  if (a.strength) {
    // StableDiffusionImg2ImgPipeline.get_timesteps + prepare_latents.
    const int64_t n = a.steps;
    const int64_t init_timestep = std::min(static_cast<int64_t>(n * *a.strength), n);
    const int64_t t_start = std::max<int64_t>(n - init_timestep, 0);
    timesteps = timesteps.slice(0, t_start * scheduler->order());
    scheduler->set_begin_index(t_start * scheduler->order());
    at::Tensor init = input(in, a.inputs, "init");
    at::Tensor noise = at::randn(init.sizes(), generator, init.options());
    latents = scheduler->add_noise(init, noise, timesteps.slice(0, 0, 1).repeat({init.size(0)}));
  } else {
    latents = input(in, a.inputs, "latents") * scheduler->init_noise_sigma();
  }
  for (int64_t i = 0; i < timesteps.size(0); ++i) {
    at::Tensor t = timesteps[i];
    at::Tensor x_in = scheduler->scale_model_input(latents, t);
    at::Tensor model_output = stand_in(x_in, t, train);
    latents = scheduler->step(model_output, t, latents, generator);
  }
  sdtune::io::write_tensors(a.out,
                            {{"latents", latents}, {"timesteps", timesteps.to(at::kDouble)}});
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  return sdtune::driver::run_driver(
      argc, argv, "A scheduler's whole sampling loop with a stand-in model",
      [&](CLI::App& app) {
        app.add_option("--config", a.config, "scheduler_config.json")->required();
        app.add_option("--scheduler", a.scheduler, "A --scheduler name of sdtune generate")
            ->required();
        app.add_flag("--karras", a.karras, "Karras sigmas");
        app.add_option("--eta", a.eta, "DDIM's eta (ddim only)");
        app.add_option("--steps", a.steps, "Sampling steps")->required();
        app.add_option("--seed", a.seed, "Seed of the CPU generator for every random draw")
            ->required();
        app.add_option("--inputs", a.inputs, "Input tensors (.safetensors)")->required();
        app.add_option("--out", a.out, "Output tensors (.safetensors)")->required();
        app.add_option("--strength", a.strength, "img2img: start from `init` noised this far");
      },
      [&] {
        c10::InferenceMode guard;
        run(a);
      });
}
