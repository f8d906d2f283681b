#include "sdtune/train/training_models.h"
#include "sdtune/models/attention_backend.h"
#include "sdtune/models/memory_format.h"

#include <ATen/CPUGeneratorImpl.h>

#include "sdtune/error.h"
#include "sdtune/train/train_state.h"

namespace sdtune::train {
namespace {

std::vector<at::Tensor> adapter_tensors(const std::vector<lora::Adapter>& adapters) {
  std::vector<at::Tensor> out;
  for (const auto& a : adapters) out.insert(out.end(), {a.branch->down, a.branch->up});
  return out;
}

}  // namespace

std::optional<at::ScalarType> autocast_dtype(const std::string& mixed_precision) {
  if (mixed_precision == "bf16") return at::kBFloat16;
  if (mixed_precision == "fp16") return at::kHalf;
  return std::nullopt;
}

TrainingModels::TrainingModels(const TrainOptions& o)
    : o(o),
      device(o.device),
      amp(autocast_dtype(o.mixed_precision)),
      weight_dtype(amp.value_or(at::kFloat)),
      lora_on(o.lora.enabled()),
      full_text_encoder(o.train_text_encoder && !lora_on),
      base(io::ModelFolder::open(o.model)),
      fp32{device, at::kFloat, o.variant},
      frozen{device, weight_dtype, o.variant},
      tokenizer(text::ClipTokenizer::from_pipeline(base)),
      unet(models::load_unet(base, lora_on ? frozen : fp32)),
      vae(models::load_vae(base, frozen)),
      text_encoder(models::load_text_encoder(base, full_text_encoder ? fp32 : frozen)),
      lora_alpha(o.lora.alpha.value_or(static_cast<double>(o.lora.rank.value_or(1)))),
      scheduler(schedulers::SchedulerConfig::from_json(base.component_config("scheduler"))) {
  for (auto& p : vae->parameters()) p.set_requires_grad(false);
  vae->eval();
  for (auto& p : unet->parameters()) p.set_requires_grad(!lora_on);
  for (auto& p : text_encoder->parameters()) p.set_requires_grad(full_text_encoder);
  o.train_text_encoder ? text_encoder->train() : text_encoder->eval();
  if (unet->config.text_time_embedding) {
    tokenizer_2 = text::ClipTokenizer::load(base.component_dir("tokenizer_2"));
    // Trained in full with the first one (kohya's sdxl_train.py --train_text_encoder), or frozen.
    text_encoder_2 =
        models::load_text_encoder(base, full_text_encoder ? fp32 : frozen, "text_encoder_2");
    for (auto& p : text_encoder_2->parameters()) p.set_requires_grad(full_text_encoder);
    o.train_text_encoder ? text_encoder_2->train() : text_encoder_2->eval();
  }
  unet->train();
  // LoRA adapters, initialized as PEFT does from their own generator (seeded by the run's seed).
  if (lora_on) {
    at::Generator lora_gen = at::make_generator<at::CPUGeneratorImpl>(o.seed);
    lora::AdapterOptions a{*o.lora.rank, lora_alpha, o.lora.dropout, o.lora.unet_layers};
    adapters["unet"] = lora::attach_adapters(*unet, a, lora_gen);
    if (o.train_text_encoder) {
      // Both of SDXL's text encoders, the first one first (diffusers' SDXL LoRA scripts).
      a.targets = o.lora.text_encoder_layers;
      adapters["text_encoder"] = lora::attach_adapters(*text_encoder, a, lora_gen);
      if (text_encoder_2)
        adapters["text_encoder_2"] = lora::attach_adapters(*text_encoder_2, a, lora_gen);
    }
  }
  unet->set_gradient_checkpointing(o.gradient_checkpointing);
  if (o.channels_last) {  // before the parameter lists: the same tensors, NHWC
    models::to_channels_last(*unet);
    models::to_channels_last(*vae);
  }
  models::prefer_attention_backend(o.attention_backend, device);
  unet_params = lora_on ? adapter_tensors(adapters["unet"]) : unet->parameters();
  if (o.train_text_encoder) {
    te_params = lora_on ? adapter_tensors(adapters["text_encoder"]) : text_encoder->parameters();
    if (text_encoder_2)  // SDXL: the second encoder's after the first's, in one group
      for (const auto& t :
           lora_on ? adapter_tensors(adapters["text_encoder_2"]) : text_encoder_2->parameters())
        te_params.push_back(t);
  }
}

void TrainingModels::freeze_text_encoder() {
  for (const auto& p : te_params) p.set_requires_grad(false);
  text_encoder->eval();
  if (text_encoder_2) text_encoder_2->eval();
}

StepOptions step_options(const TrainOptions& o, const TrainingModels& m) {
  const bool prior = o.dreambooth.enabled && o.dreambooth.with_prior_preservation;
  return {.schedule = schedulers::make_noise_schedule(m.scheduler),
          .prediction_type = o.prediction_type.empty()
                                 ? m.scheduler.prediction_type
                                 : schedulers::parse_prediction_type(o.prediction_type),
          .num_train_timesteps = m.scheduler.num_train_timesteps,
          .scaling_factor = m.vae->config.scaling_factor,
          .noise_offset = o.noise_offset,
          .snr_gamma = o.snr_gamma,
          .prior_loss_weight = prior ? std::optional(o.dreambooth.prior_loss_weight) : std::nullopt,
          .autocast = m.amp};
}

io::SavedWeights pipeline_weights(const TrainingModels& m, const Ema* ema) {
  io::SavedWeights w;
  w.unet = module_weights(*m.unet, ema ? &ema->shadow_params() : nullptr);
  if (m.full_text_encoder) w.text_encoder = module_weights(*m.text_encoder);
  if (m.full_text_encoder && m.text_encoder_2) w.text_encoder_2 = module_weights(*m.text_encoder_2);
  return w;
}

std::vector<lora::LoraLayer> lora_layers(const TrainingModels& m) {
  std::vector<lora::LoraLayer> layers;
  for (const auto& [component, list] : m.adapters)
    for (auto& l : lora::adapter_layers(component, list, m.lora_alpha)) layers.push_back(l);
  return layers;
}

}  // namespace sdtune::train
