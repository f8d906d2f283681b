#pragma once
// Training a pipeline's VAE (AutoencoderKL) on images: the minimal objective a VAE needs, for a
// model made from scratch (the tiny world's base model) rather than fine-tuned:
//   loss = mean over pixels of (x̂ − x)²  +  kl_weight · mean over latent elements of
//          KL(N(μ, σ²) ‖ N(0, 1)) = ½(μ² + σ² − 1 − log σ²)
// with x̂ = decode(z), z ~ N(μ, σ²) = encode(x) (the reparameterization trick). At the end the
// latents' scaling_factor (1 / their standard deviation, as Stable Diffusion's 0.18215 was
// chosen) goes into the saved VAE config, so that the UNet sees latents of unit variance.
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "sdtune/data/caption_dataset.h"
#include "sdtune/io/image.h"
#include "sdtune/train/trainer.h"

namespace sdtune::train {

struct VaeTrainOptions {
  std::filesystem::path model;  // pipeline folder whose vae/ is trained (its other parts copied)
  std::filesystem::path data;   // image folder, .parquet file or folder of parquet files
  std::filesystem::path out;    // the pipeline with the trained VAE; logs/ inside
  std::string variant;
  std::string device = "cpu";
  std::string image_column = "image", caption_column = "text";
  bool allow_outside_data = false;                 // as TrainOptions'
  int64_t max_image_pixels = io::kMaxImagePixels;  // as TrainOptions'
  int64_t resolution = 64;
  bool center_crop = false;  // else a random crop
  bool random_flip = false;
  int64_t batch_size = 16;
  int64_t max_steps = 1000;
  double learning_rate = 1e-4;
  int64_t lr_warmup_steps = 0;
  double adam_weight_decay = 0.0;
  double max_grad_norm = 1.0;  // 0 disables clipping
  double kl_weight = 1e-3;
  int64_t scaling_images = 256;  // images whose latents set scaling_factor
  uint64_t seed = 0;
  int64_t log_every = 10;
};

struct VaeTrainSummary {
  int64_t steps = 0, examples = 0;
  std::vector<data::Skipped> skipped;
  // Reconstruction MSE (pixels in [-1, 1]) of the first and last logged steps.
  double first_reconstruction = 0, last_reconstruction = 0;
  double scaling_factor = 0;
  std::filesystem::path output;
  double seconds = 0;
};

// Runs the training; an Error for bad options, an unusable dataset or model, a non-finite loss.
VaeTrainSummary train_vae(const VaeTrainOptions& options, const TrainHooks& hooks = {});

}  // namespace sdtune::train
