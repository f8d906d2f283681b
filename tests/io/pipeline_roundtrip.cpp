// Test driver: loads a pipeline folder's UNet, text encoder and VAE, optionally perturbs the UNet
// and text-encoder weights, and saves the pipeline with io::save_pipeline (VAE copied), so that
// tests/io/test_pipeline_writer.py can load the result with diffusers.
//
//   sdtune_pipeline_roundtrip --model IN --out OUT [--perturb] [--save-dtype fp32|fp16|bf16]
//
// --perturb adds 0.01 · sin(i + arange(numel)) (reshaped to the parameter) to each parameter,
// where i is the rank of its name among the module's names sorted: deterministic, different for
// every parameter, and easy to recompute in Python without knowing sdtune's registration order.
#include <map>
#include <string>

#include "driver.h"
#include "sdtune/io/model_folder.h"
#include "sdtune/io/pipeline_writer.h"
#include "sdtune/io/state_dict.h"
#include "sdtune/models/component_loader.h"

namespace {

namespace io = sdtune::io;

struct Args {
  std::string model, out;
  bool perturb = false;
  std::string save_dtype = "fp32";
};

io::NamedTensors weights_of(const torch::nn::Module& module, bool perturb) {
  io::NamedTensors state = io::state_dict_of(module);
  if (!perturb) return state;
  std::map<std::string, std::size_t> rank;
  for (const auto& [name, tensor] : state) rank[name] = 0;
  std::size_t next = 0;
  for (auto& [name, r] : rank) r = next++;
  at::NoGradGuard no_grad;
  for (auto& [name, p] : state) {
    const auto i = rank.at(name);
    const at::Tensor offset =
        at::sin(at::arange(p.numel(), at::kDouble) + static_cast<double>(i)) * 0.01;
    p.add_(offset.to(p.scalar_type()).reshape(p.sizes()));
  }
  return state;
}

void run(const Args& a) {
  const auto folder = io::ModelFolder::open(a.model);
  auto unet = sdtune::models::load_unet(folder);
  auto text_encoder = sdtune::models::load_text_encoder(folder);
  // Loaded to check that the base VAE is valid; its weights are copied, not re-saved.
  auto vae = sdtune::models::load_vae(folder);
  io::SavedWeights weights;
  weights.unet = weights_of(*unet, a.perturb);
  weights.text_encoder = weights_of(*text_encoder, a.perturb);
  weights.save_dtype = sdtune::models::parse_dtype(a.save_dtype);
  io::save_pipeline(folder, a.out, weights);
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  return sdtune::driver::run_driver(
      argc, argv, "Loads a pipeline, optionally perturbs its weights and saves it",
      [&](CLI::App& app) {
        app.add_option("--model", a.model, "Pipeline folder to load")->required();
        app.add_option("--out", a.out, "Pipeline folder to write")->required();
        app.add_flag("--perturb", a.perturb, "Add 0.01 * sin(i + arange) to every weight");
        app.add_option("--save-dtype", a.save_dtype, "fp32, fp16 or bf16")->capture_default_str();
      },
      [&] { run(a); });
}
