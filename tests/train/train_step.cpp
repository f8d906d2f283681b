// Test driver: the trainer's training step of the UNet (forward, loss, backward) on given inputs,
// so that tests/train/test_train_step.py can compare the loss and every parameter's gradient with
// diffusers' UNet under train_text_to_image.py's loss.
//
//   sdtune_train_step --model DIR --inputs in.safetensors --out out.safetensors
//       [--prediction-type epsilon|v_prediction|sample] [--snr-gamma G] [--gradient-checkpointing]
//
// Inputs: `latents` (x₀), `noise` (ε), `timesteps` (int64 [B]), `encoder_hidden_states`; for an
// SDXL UNet also `text_embeds` (the pooled vector) and `time_ids` [B, 6].
// Outputs: `loss` and `grad.<parameter name>` for every UNet parameter. The prediction type
// defaults to the scheduler config's.
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "driver.h"
#include "sdtune/error.h"
#include "sdtune/io/model_folder.h"
#include "sdtune/io/tensor.h"
#include "sdtune/models/component_loader.h"
#include "sdtune/schedulers/scheduler.h"
#include "sdtune/train/loss_scaler.h"
#include "sdtune/train/training_step.h"

namespace {

using sdtune::Error;
namespace sched = sdtune::schedulers;
namespace train = sdtune::train;

struct Args {
  std::string model, inputs, out;
  std::optional<std::string> prediction_type;
  std::optional<double> snr_gamma;
  bool gradient_checkpointing = false;
};

at::Tensor input(const std::map<std::string, at::Tensor>& in, const std::string& name) {
  auto it = in.find(name);
  if (it == in.end()) throw Error("missing input tensor '" + name + "'");
  return it->second;
}

void run(const Args& a) {
  const auto folder = sdtune::io::ModelFolder::open(a.model);
  auto unet = sdtune::models::load_unet(folder);
  const auto config = sched::SchedulerConfig::from_json(folder.component_config("scheduler"));
  const sched::NoiseSchedule schedule = sched::make_noise_schedule(config);
  const sched::PredictionType type =
      a.prediction_type ? sched::parse_prediction_type(*a.prediction_type) : config.prediction_type;

  const auto in = sdtune::io::read_tensors(a.inputs);
  const at::Tensor latents = input(in, "latents"), noise = input(in, "noise");
  const at::Tensor timesteps = input(in, "timesteps").to(at::kLong);
  const at::Tensor context = input(in, "encoder_hidden_states");
  at::Tensor text_embeds, time_ids;
  if (unet->config.text_time_embedding) {
    text_embeds = input(in, "text_embeds");
    time_ids = input(in, "time_ids");
  }

  unet->train();
  unet->set_gradient_checkpointing(a.gradient_checkpointing);
  // The trainer's own step (train/training_step.h) on the given x₀, ε and t.
  const train::StepOptions options{.schedule = schedule,
                                   .prediction_type = type,
                                   .num_train_timesteps = config.num_train_timesteps,
                                   .snr_gamma = a.snr_gamma};
  const train::LossScaler no_scaling({.enabled = false}, latents.device());
  const train::StepLoss loss = train::training_step(unet, nullptr, nullptr,
                                                    /*text_encoder_trains=*/false,
                                                    {.latents = latents,
                                                     .noise = noise,
                                                     .timesteps = timesteps,
                                                     .context = context,
                                                     .text_embeds = text_embeds,
                                                     .time_ids = time_ids},
                                                    options, no_scaling);

  std::vector<std::pair<std::string, at::Tensor>> out{
      {"loss", at::scalar_tensor(loss.loss, at::kFloat)}};
  for (const auto& p : unet->named_parameters()) {
    const at::Tensor& grad = p.value().grad();
    out.emplace_back("grad." + p.key(), grad.defined() ? grad : at::zeros_like(p.value()));
  }
  sdtune::io::write_tensors(a.out, out);
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  return sdtune::driver::run_driver(
      argc, argv, "One UNet training step (loss and gradients) on given inputs",
      [&](CLI::App& app) {
        app.add_option("--model", a.model, "Pipeline folder")->required();
        app.add_option("--inputs", a.inputs, "Input tensors (.safetensors)")->required();
        app.add_option("--out", a.out, "Loss and gradients (.safetensors)")->required();
        app.add_option("--prediction-type", a.prediction_type,
                       "epsilon, v_prediction or sample (default: the scheduler config's)");
        app.add_option("--snr-gamma", a.snr_gamma, "Min-SNR loss weighting's gamma");
        app.add_flag("--gradient-checkpointing", a.gradient_checkpointing,
                     "Recompute the UNet's block activations in backward");
      },
      [&] { run(a); });
}
