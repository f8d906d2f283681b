#pragma once
// A run's state beyond its pipeline folder: what a checkpoint's training_state/ holds and what a
// resume restores, both from one table of parts (docs/architecture.md lists the layout): the
// trained weights where the pipeline does not hold them (LoRA adapters, the raw UNet next to its
// EMA), the optimizer, EMA, loss scaler, batch order, both random generators, and the counters.
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "sdtune/data/batch_sampler.h"
#include "sdtune/io/pipeline_writer.h"
#include "sdtune/io/state_dict.h"
#include "sdtune/lora/adapters.h"
#include "sdtune/models/clip_text_model.h"
#include "sdtune/models/unet_2d_condition.h"
#include "sdtune/train/ema.h"
#include "sdtune/train/loss_scaler.h"
#include "sdtune/train/optimizer.h"

namespace sdtune::train {

struct TrainCounters {
  int64_t step = 0;           // optimizer steps done
  int64_t lr_step = 0;        // steps the LR schedule has taken (skipped steps do not count)
  int64_t nonfinite_run = 0;  // consecutive steps with a non-finite loss
};

struct TrainState {
  models::UNet2DConditionModel unet;
  models::CLIPTextModel text_encoder;
  models::CLIPTextModel text_encoder_2{nullptr};  // SDXL's second
  bool full_text_encoder = false;  // trained in full (both of SDXL's): the pipeline holds them
  lora::AdapterSet* adapters = nullptr;  // a LoRA run's adapters (none for full fine-tuning)
  Optimizer* optimizer = nullptr;
  Ema* ema = nullptr;  // with --use-ema
  LossScaler* scaler = nullptr;
  data::BatchSampler* sampler = nullptr;
  // `data_gen` (CPU) draws crops and flips; `noise_gen` the posterior sample, the noise, the
  // timesteps and what draws from the device's default generator (LoRA dropout).
  at::Generator data_gen, noise_gen;
  TrainCounters counters;

  // training_state/NAME.safetensors of a checkpoint, by NAME.
  std::map<std::string, io::StateDict> save() const;
  // training_state/trainer_state.json: the counters and what the run was.
  nlohmann::json trainer_state(int64_t max_steps, int64_t epoch, int64_t examples) const;
  // Restores the weights, every part and the counters from checkpoint `dir`. An Error names the
  // file when a part is missing or does not fit (a run resumed with other options).
  void restore(const std::filesystem::path& dir);
};

// The module's state under its state-dict names (parameters, then buffers), the parameters
// replaced by `params` (e.g. EMA shadows, in parameters() order) when given.
io::NamedTensors module_weights(const torch::nn::Module& m,
                                const std::vector<at::Tensor>* params = nullptr);

}  // namespace sdtune::train
