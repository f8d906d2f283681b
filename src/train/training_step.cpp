#include "sdtune/train/training_step.h"

#include "sdtune/error.h"
#include "sdtune/models/autocast.h"
#include "sdtune/models/sdxl_text_conditioning.h"
#include "sdtune/train/diffusion_loss.h"

namespace sdtune::train {

StepInputs draw_step_inputs(const Batch& batch, at::Generator& gen, const StepOptions& o) {
  StepInputs in;
  in.latents = batch.posterior.sample(gen) * o.scaling_factor;
  in.noise = sample_noise(in.latents.sizes(), gen, o.noise_offset, in.latents.options());
  in.timesteps = sample_timesteps(in.latents.size(0), o.num_train_timesteps, gen);
  in.context = batch.context;
  in.input_ids = batch.input_ids;
  in.input_ids_2 = batch.input_ids_2;
  in.text_embeds = batch.text_embeds;
  in.time_ids = batch.time_ids;
  return in;
}

StepLoss training_step(models::UNet2DConditionModel unet, models::CLIPTextModel text_encoder,
                       models::CLIPTextModel text_encoder_2, bool text_encoder_trains,
                       const StepInputs& in, const StepOptions& o, const LossScaler& scaler,
                       int64_t divisor) {
  const at::Tensor noisy = schedulers::add_noise(o.schedule, in.latents, in.noise, in.timesteps);
  StepLoss out;
  at::Tensor loss;
  {
    models::AutocastGuard autocast(in.latents.device().type(), o.autocast);
    at::Tensor context = in.context;
    std::optional<models::AddedConditions> added;
    if (unet->config.text_time_embedding) {
      if (!in.time_ids.defined()) throw Error("internal: an SDXL training step without time ids");
      at::Tensor pooled = in.text_embeds;
      if (context.defined() != pooled.defined())
        throw Error("internal: an SDXL step needs the cached context and pooled vector together");
      if (!context.defined()) {
        std::optional<at::NoGradGuard> frozen;
        if (!text_encoder_trains) frozen.emplace();
        auto c = models::sdxl_text_conditioning(text_encoder, text_encoder_2, in.input_ids,
                                                in.input_ids_2);
        context = c.context;
        pooled = c.pooled;
      }
      added = models::AddedConditions{pooled, in.time_ids};
    } else if (!context.defined()) {
      std::optional<at::NoGradGuard> frozen;
      if (!text_encoder_trains) frozen.emplace();
      context = text_encoder->forward(in.input_ids).last_hidden_state;
    }
    const at::Tensor model_pred =
        unet->forward(noisy, in.timesteps, context, added ? &*added : nullptr);
    const at::Tensor target =
        training_target(o.prediction_type, in.latents, in.noise, in.timesteps, o.schedule);
    std::optional<at::Tensor> weights;
    if (o.snr_gamma)
      weights = min_snr_weights(snr(o.schedule, in.timesteps), *o.snr_gamma, o.prediction_type);
    const at::Tensor pred32 = model_pred.to(at::kFloat), target32 = target.to(at::kFloat);
    if (o.prior_loss_weight) {
      // Prior preservation: MSE on the instance half (min-SNR weighted with its own timesteps)
      // + weight · plain MSE on the class half.
      const int64_t b = pred32.size(0) / 2;
      if (weights) weights = weights->slice(0, 0, b);
      const at::Tensor instance_loss =
          diffusion_loss(pred32.slice(0, 0, b), target32.slice(0, 0, b), weights);
      const at::Tensor prior_loss =
          diffusion_loss(pred32.slice(0, b), target32.slice(0, b), std::nullopt);
      loss = instance_loss + *o.prior_loss_weight * prior_loss;
      out.instance = instance_loss.item<double>();
      out.prior = prior_loss.item<double>();
    } else {
      loss = diffusion_loss(pred32, target32, weights);
    }
  }
  out.loss = loss.item<double>();
  scaler.scale(loss / divisor).backward();
  return out;
}

}  // namespace sdtune::train
