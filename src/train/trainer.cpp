// The training loop. It reads top to bottom: options, models, data, optimizer, resume, then the
// loop (micro-batches → gradient reduction → clipping → update → EMA → logs, validation and
// checkpoints), then the final model. Three places are marked for data-parallel training:
// data sharding (BatchSampler's rank/world), the gradient reduction (reduce_gradients) and the
// rank-0-only writes (kIsMainProcess).
#include "sdtune/train/trainer.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/nn/module.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <optional>

#include "sdtune/data/batch_sampler.h"
#include "sdtune/data/image_loader.h"
#include "sdtune/data/image_transforms.h"
#include "sdtune/error.h"
#include "sdtune/io/image.h"
#include "sdtune/io/model_folder.h"
#include "sdtune/io/state_dict.h"
#include "sdtune/lora/adapters.h"
#include "sdtune/lora/lora.h"
#include "sdtune/models/stable_diffusion.h"
#include "sdtune/pipeline/stable_diffusion_pipeline.h"
#include "sdtune/schedulers/scheduler.h"
#include "sdtune/train/adamw.h"
#include "sdtune/train/autocast.h"
#include "sdtune/train/checkpoint.h"
#include "sdtune/train/class_images.h"
#include "sdtune/train/determinism.h"
#include "sdtune/train/diffusion_loss.h"
#include "sdtune/train/ema.h"
#include "sdtune/train/grad_norm.h"
#include "sdtune/train/latent_cache.h"
#include "sdtune/train/loss_scaler.h"
#include "sdtune/train/lr_schedule.h"
#include "sdtune/train/metrics_log.h"
#include "sdtune/train/text_embedding_cache.h"

namespace sdtune::train {
namespace fs = std::filesystem;
namespace {

// Single process for now. With data-parallel training only rank 0 writes checkpoints, logs,
// validation images and the final model.
constexpr bool kIsMainProcess = true;
constexpr int64_t kRank = 0, kWorldSize = 1;

// The files of a LoRA run's result (and, the first, of its checkpoints).
const char* const kLoraFile = "pytorch_lora_weights.safetensors";
const char* const kKohyaLoraFile = "lora_kohya.safetensors";

// Data-parallel gradient reduction point: an all-reduce (mean) of every trainable gradient over
// the ranks goes here, once per optimizer step, after the last micro-batch's backward.
void reduce_gradients(const std::vector<at::Tensor>& params) {}

std::string str(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

void check_options(const TrainOptions& o) {
  auto positive = [](const char* name, int64_t v) {
    if (v < 1) throw Error(std::string(name) + " must be at least 1, got " + std::to_string(v));
  };
  positive("--resolution", o.resolution);
  positive("--batch-size", o.batch_size);
  positive("--gradient-accumulation-steps", o.gradient_accumulation_steps);
  positive("--num-validation-images", o.num_validation_images);
  positive("--max-nonfinite-steps", o.max_nonfinite_steps);
  if (o.resolution % 8 != 0)
    throw Error("--resolution must be a multiple of 8, got " + std::to_string(o.resolution));
  if (o.max_steps < 0) throw Error("--max-steps must be >= 0");
  if (o.enable_bucket) {
    if (o.bucket_reso_steps < 8 || o.bucket_reso_steps % 8 != 0)
      throw Error("--bucket-reso-steps must be a positive multiple of 8, got " +
                  std::to_string(o.bucket_reso_steps));
    if (o.min_bucket_reso < o.bucket_reso_steps || o.min_bucket_reso > o.resolution ||
        o.max_bucket_reso < o.resolution)
      throw Error(
          "buckets need --bucket-reso-steps <= --min-bucket-reso <= --resolution <= "
          "--max-bucket-reso");
  }
  if (o.cache_latents && !o.center_crop && !o.enable_bucket)
    throw Error(
        "--cache-latents needs --center-crop or --enable-bucket: a random crop is a new image "
        "every step, which no cache can hold");
  if (o.cache_text_encoder_outputs && o.train_text_encoder)
    throw Error(
        "--cache-text-encoder-outputs needs a frozen text encoder: --train-text-encoder changes "
        "the outputs every step");
  if (o.stop_text_encoder_training < 0) throw Error("--stop-text-encoder-training must be >= 0");
  if (o.stop_text_encoder_training > 0 && !o.train_text_encoder)
    throw Error("--stop-text-encoder-training needs --train-text-encoder");
  const auto& db = o.dreambooth;
  if (db.enabled) {
    if (db.instance_prompt.empty()) throw Error("--instance-prompt is required");
    if (db.repeats < 1) throw Error("--repeats must be at least 1");
    if (o.enable_bucket) throw Error("--enable-bucket is not supported with dreambooth yet");
    if (db.with_prior_preservation) {
      if (db.class_prompt.empty())
        throw Error("--with-prior-preservation needs --class-prompt (e.g. \"a photo of a dog\")");
      if (db.class_data.empty())
        throw Error("--with-prior-preservation needs --class-data DIR (where class images are)");
      if (db.num_class_images < 1) throw Error("--num-class-images must be at least 1");
      if (!(db.prior_loss_weight >= 0)) throw Error("--prior-loss-weight must be >= 0");
    }
  }
  if (o.lora.enabled()) {
    if (*o.lora.rank < 1)
      throw Error("--lora-rank must be at least 1, got " + std::to_string(*o.lora.rank));
    if (o.lora.alpha && !(*o.lora.alpha > 0)) throw Error("--lora-alpha must be positive");
    if (!(o.lora.dropout >= 0 && o.lora.dropout < 1))
      throw Error("--lora-dropout must be in [0, 1), got " + str(o.lora.dropout));
    if (o.lora.unet_layers.empty()) throw Error("--lora-layers names no layer");
    if (o.train_text_encoder && o.lora.text_encoder_layers.empty())
      throw Error("--lora-text-encoder-layers names no layer");
    if (o.use_ema)
      throw Error("--use-ema is for full fine-tuning: a LoRA run trains adapters, not the UNet");
  }
  if (o.max_steps == 0 && o.num_train_epochs < 1) throw Error("--num-train-epochs must be >= 1");
  if (!(o.learning_rate > 0))
    throw Error("--learning-rate must be positive, got " + str(o.learning_rate));
  if (o.mixed_precision != "no" && o.mixed_precision != "fp16" && o.mixed_precision != "bf16")
    throw Error("--mixed-precision must be no, fp16 or bf16, got '" + o.mixed_precision + "'");
  if (o.snr_gamma && !(*o.snr_gamma > 0)) throw Error("--snr-gamma must be positive");
  if (o.checkpointing_steps < 0 || o.validation_steps < 0 || o.checkpoints_total_limit < 0)
    throw Error(
        "--checkpointing-steps, --validation-steps and --checkpoints-total-limit must be >= 0");
  if (o.out.empty()) throw Error("--out is required");
  if (o.data.empty()) throw Error("--data is required");
}

std::optional<at::ScalarType> autocast_dtype(const std::string& mixed_precision) {
  if (mixed_precision == "bf16") return at::kBFloat16;
  if (mixed_precision == "fp16") return at::kHalf;
  return std::nullopt;
}

std::vector<at::Tensor> parameters_of(const torch::nn::Module& m) {
  return m.parameters();
}

void set_requires_grad(torch::nn::Module& m, bool on) {
  for (auto& p : m.parameters()) p.set_requires_grad(on);
}

// The module's state under its state-dict names, the parameters replaced by `params` (EMA
// shadows, in parameters() order) when given: what the pipeline folder gets.
io::NamedTensors weights_of(const torch::nn::Module& m, const std::vector<at::Tensor>* params) {
  io::NamedTensors out;
  size_t i = 0;
  for (const auto& p : m.named_parameters())
    out.emplace_back(p.key(), params ? (*params)[i++] : p.value());
  for (const auto& b : m.named_buffers()) out.emplace_back(b.key(), b.value());
  return out;
}

io::StateDict to_state_dict(const io::NamedTensors& named) {
  io::StateDict out;
  for (const auto& [k, v] : named) out[k] = v.detach();
  return out;
}

io::StateDict generator_state(at::Generator& gen) {
  return {{"state", gen.get_state()}};
}

void set_generator_state(at::Generator& gen, const io::StateDict& state, const std::string& what) {
  auto it = state.find("state");
  if (it == state.end()) throw Error("checkpoint has no '" + what + "' generator state");
  gen.set_state(it->second);
}

struct Validation {
  std::vector<std::string> prompts;
  int64_t images_per_prompt = 1, steps = 20;
  double guidance = 7.5;
  uint64_t seed = 0;
};

// Generates the validation images with the weights as they are now and writes them, and a grid
// (a row per prompt), to DIR/step-STEP/. Returns the grid.
at::Tensor run_validation(const io::ModelFolder& base, const models::LoadOptions& load,
                          models::CLIPTextModel text_encoder, models::UNet2DConditionModel unet,
                          models::AutoencoderKL vae, const Validation& v,
                          std::optional<at::ScalarType> amp, const fs::path& dir, int64_t step) {
  pipeline::StableDiffusionPipeline pipe(base, load, text_encoder, unet, vae);
  AutocastGuard autocast(load.device.type(), amp);
  std::vector<at::Tensor> cells;
  std::vector<std::string> row_labels, col_labels;
  char name[32];
  std::snprintf(name, sizeof name, "step-%06lld", static_cast<long long>(step));
  const fs::path step_dir = dir / name;
  fs::create_directories(step_dir);
  for (size_t p = 0; p < v.prompts.size(); ++p) {
    pipeline::GenerateOptions g;
    g.prompt = v.prompts[p];
    g.steps = v.steps;
    g.guidance_scale = v.guidance;
    g.num_images = v.images_per_prompt;
    g.seed = v.seed;
    const at::Tensor images = pipe.generate(g);
    row_labels.push_back(v.prompts[p]);
    for (int64_t i = 0; i < images.size(0); ++i) {
      cells.push_back(images[i]);
      const fs::path file =
          step_dir / ("prompt" + std::to_string(p) + "-" + std::to_string(i) + ".png");
      std::error_code ec;
      fs::remove(file, ec);  // a resumed run regenerates the same step
      io::write_png(file, images[i],
                    {{"parameters", g.prompt + "\nSteps: " + std::to_string(g.steps) +
                                        ", CFG scale: " + str(g.guidance_scale) +
                                        ", Seed: " + std::to_string(g.seed) +
                                        ", Training step: " + std::to_string(step)}});
    }
  }
  for (int64_t i = 0; i < v.images_per_prompt; ++i)
    col_labels.push_back("seed " + std::to_string(v.seed) + " #" + std::to_string(i));
  at::Tensor grid = io::labelled_grid(cells, static_cast<int64_t>(v.prompts.size()),
                                      v.images_per_prompt, row_labels, col_labels);
  std::error_code ec;
  fs::remove(step_dir / "grid.png", ec);
  io::write_png(step_dir / "grid.png", grid);
  return grid;
}

}  // namespace

void TrainHooks::say(const std::string& m) const {
  if (message)
    message(m);
  else
    std::fprintf(stderr, "sdtune: %s\n", m.c_str());
}

TrainSummary train(const TrainOptions& o, const TrainHooks& hooks) {
  const auto started = std::chrono::steady_clock::now();
  auto say = [&](const std::string& m) { hooks.say(m); };
  check_options(o);
  if (o.deterministic) use_deterministic_algorithms();  // before the first CUDA operation
  TrainSummary summary;
  const auto& db = o.dreambooth;
  const bool prior = db.enabled && db.with_prior_preservation;

  // ---- DreamBooth class images: generated before the models for training are loaded, so that
  // the two copies of the base model are never in memory together.
  if (prior) {
    const io::ModelFolder base = io::ModelFolder::open(o.model);
    const std::optional<at::ScalarType> amp = autocast_dtype(o.mixed_precision);
    ClassImageOptions c{db.class_prompt,         db.num_class_images, db.class_inference_steps,
                        db.class_guidance_scale, o.resolution,        o.seed};
    const ClassImageReport r = ensure_class_images(
        base, {c10::Device(o.device), amp.value_or(at::kFloat), o.variant}, db.class_data, c,
        [&](int64_t done, int64_t total) {
          say("generated class image " + std::to_string(done) + "/" + std::to_string(total));
        });
    summary.class_images_found = r.found;
    summary.class_images_generated = r.generated;
  }

  // ---- Models ------------------------------------------------------------------------------
  // The UNet (and the text encoder when trained) are fp32 master weights; with mixed precision
  // the frozen VAE and text encoder are cast to the compute dtype, as train_text_to_image.py does.
  // With LoRA every model is frozen in the compute dtype and only the adapters (fp32) train, as
  // in diffusers' LoRA scripts.
  const bool lora_on = o.lora.enabled();
  const c10::Device device(o.device);
  const std::optional<at::ScalarType> amp = autocast_dtype(o.mixed_precision);
  const at::ScalarType weight_dtype = amp.value_or(at::kFloat);
  const io::ModelFolder base = io::ModelFolder::open(o.model);
  const models::LoadOptions fp32{device, at::kFloat, o.variant};
  const models::LoadOptions frozen{device, weight_dtype, o.variant};
  const text::ClipTokenizer tokenizer = models::load_tokenizer(base);
  const bool full_text_encoder = o.train_text_encoder && !lora_on;
  models::UNet2DConditionModel unet = models::load_unet(base, lora_on ? frozen : fp32);
  models::AutoencoderKL vae = models::load_vae(base, frozen);
  models::CLIPTextModel text_encoder =
      models::load_text_encoder(base, full_text_encoder ? fp32 : frozen);
  set_requires_grad(*vae, false);
  vae->eval();
  set_requires_grad(*unet, !lora_on);
  set_requires_grad(*text_encoder, full_text_encoder);
  o.train_text_encoder ? text_encoder->train() : text_encoder->eval();
  unet->train();
  // LoRA adapters, initialized as PEFT does from their own generator (seeded by the run's seed).
  lora::AdapterSet adapters;
  const double lora_alpha = o.lora.alpha.value_or(static_cast<double>(o.lora.rank.value_or(1)));
  if (lora_on) {
    at::Generator lora_gen = at::make_generator<at::CPUGeneratorImpl>(o.seed);
    lora::AdapterOptions a{*o.lora.rank, lora_alpha, o.lora.dropout, o.lora.unet_layers};
    adapters["unet"] = lora::attach_adapters(*unet, a, lora_gen);
    if (o.train_text_encoder) {
      a.targets = o.lora.text_encoder_layers;
      adapters["text_encoder"] = lora::attach_adapters(*text_encoder, a, lora_gen);
    }
  }
  const auto adapter_tensors = [&](const std::string& component) {
    std::vector<at::Tensor> out;
    for (const auto& a : adapters[component]) out.insert(out.end(), {a.branch->down, a.branch->up});
    return out;
  };
  unet->set_gradient_checkpointing(o.gradient_checkpointing);
  const double scaling_factor = vae->config.scaling_factor;

  const auto scheduler_config =
      schedulers::SchedulerConfig::from_json(base.component_config("scheduler"));
  const schedulers::NoiseSchedule schedule = schedulers::make_noise_schedule(scheduler_config);
  const schedulers::PredictionType prediction_type =
      o.prediction_type.empty() ? scheduler_config.prediction_type
                                : schedulers::parse_prediction_type(o.prediction_type);
  const int64_t num_train_timesteps = scheduler_config.num_train_timesteps;

  // ---- Data --------------------------------------------------------------------------------
  const data::CaptionDataset dataset = data::open_dataset(o.data, o.image_column, o.caption_column);
  summary.skipped = dataset.skipped();
  // DreamBooth: the instance images all carry the instance prompt; the class images (after them
  // in `examples`) the class prompt.
  std::vector<data::Example> instance_candidates = dataset.examples(), class_candidates;
  if (db.enabled)
    for (auto& ex : instance_candidates) ex.caption = db.instance_prompt;
  if (prior) {
    const data::CaptionDataset classes = data::CaptionDataset::from_folder(db.class_data);
    for (const auto& s : classes.skipped()) summary.skipped.push_back(s);
    class_candidates = classes.examples();
    for (auto& ex : class_candidates) ex.caption = db.class_prompt;
  }
  const data::TransformOptions transform{o.resolution, o.center_crop, o.random_flip};
  // With buckets, example i belongs to bucket bucket_of[i], and a batch never mixes buckets.
  std::vector<data::BucketResolution> buckets;
  if (o.enable_bucket)
    buckets = data::make_bucket_resolutions(o.resolution, o.resolution, o.min_bucket_reso,
                                            o.max_bucket_reso, o.bucket_reso_steps);
  const auto bucket_index = [&](int64_t width, int64_t height) {
    const auto b = data::select_bucket(width, height, buckets);
    return static_cast<int64_t>(std::find(buckets.begin(), buckets.end(), b) - buckets.begin());
  };
  std::vector<data::BucketResolution> sizes;
  std::vector<data::Example> examples;
  // With --cache-latents: every usable example's VAE posterior, read from the cache or computed
  // now (each image decoded and encoded once); without it every image is decoded once up front,
  // so that a bad file is reported before training rather than in the middle of a batch.
  std::vector<CachedLatents> cached_latents;
  const fs::path cache_dir = o.cache_dir.empty() ? io::default_cache_dir() : o.cache_dir;
  if (o.cache_latents) {
    std::string preprocessing = o.enable_bucket ? "buckets " + std::to_string(o.resolution) + " " +
                                                      std::to_string(o.min_bucket_reso) + "-" +
                                                      std::to_string(o.max_bucket_reso) + "/" +
                                                      std::to_string(o.bucket_reso_steps)
                                                : "center-crop " + std::to_string(o.resolution);
    if (o.random_flip) preprocessing += " flip";
    LatentCache cache(cache_dir / "latents",
                      LatentCache::scope_of(base, o.variant, weight_dtype, preprocessing));
    // A center crop without flip draws nothing from its generator.
    at::Generator unused = at::make_generator<at::CPUGeneratorImpl>(0);
    const Preprocess preprocess = [&](const at::Tensor& rgb) {
      if (!o.enable_bucket) return data::transform_image(rgb, {o.resolution, true, false}, unused);
      return data::to_model_input(
          data::resize_to_bucket(rgb, buckets[bucket_index(rgb.size(1), rgb.size(0))]));
    };
    say("caching latents in " + (cache_dir / "latents").string());
    for (const auto* list : {&instance_candidates, &class_candidates}) {
      for (auto& c :
           cache.prepare(*list, vae, preprocess, o.random_flip, examples, summary.skipped))
        cached_latents.push_back(std::move(c));
      if (list == &instance_candidates) summary.instance_examples = examples.size();
    }
    for (const auto& c : cached_latents) sizes.push_back({c.width, c.height});
    summary.latent_cache_hits = cache.hits();
    summary.latent_cache_computed = cache.computed();
  } else {
    data::usable_examples(instance_candidates, examples, sizes, summary.skipped);
    summary.instance_examples = examples.size();
    data::usable_examples(class_candidates, examples, sizes, summary.skipped);
  }
  const int64_t n_instance = summary.instance_examples;
  const int64_t n_class = static_cast<int64_t>(examples.size()) - n_instance;
  summary.class_examples = n_class;
  if (db.enabled && n_instance == 0)
    throw Error("no usable instance image (" + std::to_string(summary.skipped.size()) + " skipped)",
                o.data.string());
  if (prior && n_class == 0) throw Error("no usable class image", db.class_data.string());
  if (examples.empty())
    throw Error("no usable training image (" + std::to_string(summary.skipped.size()) + " skipped)",
                o.data.string());
  summary.examples = static_cast<int64_t>(examples.size());
  std::vector<int64_t> bucket_of(examples.size(), 0);
  if (o.enable_bucket) {
    std::map<int64_t, int64_t> counts;
    for (size_t i = 0; i < examples.size(); ++i) {
      bucket_of[i] = bucket_index(sizes[i].width, sizes[i].height);
      ++counts[bucket_of[i]];
    }
    for (const auto& [g, n] : counts)
      summary.buckets.emplace_back(
          std::to_string(buckets[g].width) + "x" + std::to_string(buckets[g].height), n);
  }
  // With --cache-text-encoder-outputs: every caption's embedding, read or computed now.
  std::vector<at::Tensor> cached_text;
  if (o.cache_text_encoder_outputs) {
    TextEmbeddingCache cache(cache_dir / "text",
                             TextEmbeddingCache::scope_of(base, o.variant, weight_dtype, amp));
    std::vector<std::vector<int64_t>> ids;
    for (const auto& ex : examples) ids.push_back(tokenizer.encode_padded(ex.caption));
    cached_text = cache.prepare(ids, text_encoder, amp);
    summary.text_cache_hits = cache.hits();
    summary.text_cache_computed = cache.computed();
  }
  // Data sharding point: this rank's share of every epoch.
  // With prior preservation an item is a pair (instance i mod n, class i mod m), as in diffusers'
  // DreamBooth dataset: an epoch is max(n, m) pairs, and a batch of B items is 2B images.
  const int64_t instance_items = n_instance * (db.enabled ? db.repeats : 1);
  const std::vector<int64_t> item_groups =
      prior ? std::vector<int64_t>(std::max(instance_items, n_class), 0)
            : (instance_items > n_instance ? std::vector<int64_t>(instance_items, 0) : bucket_of);
  data::BatchSampler sampler(item_groups, o.batch_size, o.seed, kRank, kWorldSize);
  const int64_t steps_per_epoch =
      (sampler.batches_per_epoch() + o.gradient_accumulation_steps - 1) /
      o.gradient_accumulation_steps;
  const int64_t max_steps = o.max_steps > 0 ? o.max_steps : o.num_train_epochs * steps_per_epoch;

  // ---- Optimizer, LR schedule, EMA, loss scaling ---------------------------------------------
  double lr = o.learning_rate;
  if (o.scale_lr) lr *= o.gradient_accumulation_steps * o.batch_size * kWorldSize;
  const double text_lr = o.text_encoder_lr.value_or(lr);
  const std::vector<at::Tensor> unet_params =
      lora_on ? adapter_tensors("unet") : parameters_of(*unet);
  const std::vector<at::Tensor> te_params = !o.train_text_encoder ? std::vector<at::Tensor>{}
                                            : lora_on             ? adapter_tensors("text_encoder")
                                                                  : parameters_of(*text_encoder);
  std::vector<at::Tensor> trainable = unet_params;
  std::vector<ParamGroup> groups{{unet_params, lr, o.adam_weight_decay}};
  if (o.train_text_encoder) {
    groups.push_back({te_params, text_lr, o.adam_weight_decay});
    trainable.insert(trainable.end(), te_params.begin(), te_params.end());
  }
  std::vector<double> base_lrs;
  for (const auto& g : groups) base_lrs.push_back(g.lr);
  AdamW optimizer(std::move(groups), {o.adam_beta1, o.adam_beta2, o.adam_epsilon});
  const LrSchedule lr_schedule(
      o.lr_scheduler, {.warmup_steps = o.lr_warmup_steps, .total_steps = max_steps, .base_lr = lr});
  std::optional<Ema> ema;
  if (o.use_ema)
    ema.emplace(
        unet_params,
        EmaOptions{.decay = o.ema_decay, .use_ema_warmup = o.ema_warmup, .offload = o.offload_ema});
  LossScaler scaler({.enabled = o.mixed_precision == "fp16"}, device);

  // Random streams: `data_gen` (CPU) for crops and flips, `noise_gen` (the device's default
  // generator) for the VAE posterior sample, the noise and the timesteps, and for what draws from
  // the default generator itself (LoRA dropout). Both are seeded and checkpointed.
  at::Generator data_gen = at::make_generator<at::CPUGeneratorImpl>(o.seed);
  at::Generator noise_gen = device.is_cpu() ? at::detail::getDefaultCPUGenerator()
                                            : at::globalContext().defaultGenerator(device);
  noise_gen.set_current_seed(o.seed + 1);

  // ---- Resume --------------------------------------------------------------------------------
  int64_t step = 0;           // optimizer steps done
  int64_t lr_step = 0;        // steps the LR schedule has taken (skipped steps do not count)
  int64_t nonfinite_run = 0;  // consecutive steps with a non-finite loss
  fs::path last_checkpoint;
  if (!o.resume_from_checkpoint.empty()) {
    fs::path dir;
    if (o.resume_from_checkpoint == "latest") {
      const auto all = list_checkpoints(o.out);
      if (all.empty())
        say("no checkpoint in " + o.out.string() + " to resume from; starting a new run");
      else
        dir = all.back().second;
    } else {
      dir = o.resume_from_checkpoint;
    }
    if (!dir.empty()) {
      const LoadedCheckpoint ckpt = read_checkpoint(dir);
      auto part = [&](const std::string& name) -> const io::StateDict& {
        auto it = ckpt.state.find(name);
        if (it == ckpt.state.end())
          throw Error("checkpoint lacks training_state/" + name + ".safetensors", dir.string());
        return it->second;
      };
      // Trained weights: the adapters of a LoRA run; training_state/unet when the pipeline
      // holds EMA weights, else the pipeline's own (saved in fp32).
      if (lora_on != ckpt.trainer_state.value("lora", false))
        throw Error(lora_on ? "not a LoRA checkpoint: resume it without --lora-rank"
                            : "a LoRA checkpoint: resume it with the run's --lora-rank",
                    dir.string());
      if (lora_on)
        lora::load_adapters_state_dict(adapters, part("lora"),
                                       (dir / "training_state/lora.safetensors").string());
      else if (ckpt.state.count("unet"))
        io::load_into(*unet, part("unet"), (dir / "training_state/unet.safetensors").string());
      else
        io::load_into(*unet,
                      io::read_state_dict({dir / "unet/diffusion_pytorch_model.safetensors"}),
                      (dir / "unet").string());
      if (full_text_encoder)
        io::load_into(*text_encoder, io::read_state_dict({dir / "text_encoder/model.safetensors"}),
                      (dir / "text_encoder").string(), models::clip_text_ignored_keys());
      try {
        optimizer.load_state_dict(part("optimizer"));
        if (ema) ema->load_state_dict(part("ema"));
        scaler.load_state_dict(part("scaler"));
        sampler.load_state_dict(part("sampler"));
      } catch (const Error& e) {
        throw Error(e.message() + " (was the run resumed with different options?)", dir.string());
      }
      set_generator_state(data_gen, part("rng_data"), "data");
      set_generator_state(noise_gen, part("rng_noise"), "noise");
      const auto& ts = ckpt.trainer_state;
      step = ts.value("step", int64_t{0});
      lr_step = ts.value("lr_step", step);
      nonfinite_run = ts.value("nonfinite_run", int64_t{0});
      last_checkpoint = dir;
      summary.resumed_from = dir;
      say("resumed from " + dir.string() + " at step " + std::to_string(step));
    }
  }

  // ---- Logs --------------------------------------------------------------------------------
  const fs::path log_dir = o.out / "logs";
  std::optional<MetricsLog> metrics;
  if (kIsMainProcess) metrics.emplace(log_dir);
  const Validation validation{o.validation_prompts, o.num_validation_images,
                              o.validation_inference_steps, o.validation_guidance_scale, o.seed};

  // The pipeline weights of a save: the EMA shadows in place of the UNet's when EMA is on.
  auto pipeline_weights = [&]() {
    io::SavedWeights w;
    w.unet = weights_of(*unet, ema ? &ema->shadow_params() : nullptr);
    if (full_text_encoder) w.text_encoder = weights_of(*text_encoder, nullptr);
    return w;
  };
  // The adapters as LoRA layers, in the names LoRA files use.
  auto lora_layers = [&]() {
    std::vector<lora::LoraLayer> layers;
    for (const auto& [component, list] : adapters)
      for (auto& l : lora::adapter_layers(component, list, lora_alpha)) layers.push_back(l);
    return layers;
  };
  auto save_checkpoint = [&]() {
    if (!kIsMainProcess) return;
    CheckpointContents c;
    if (lora_on) {
      // The adapters alone, as diffusers' LoRA scripts checkpoint them: loadable with
      // load_lora_weights(checkpoint-STEP) and `sdtune generate --lora`.
      c.write_files = [&](const fs::path& dir) {
        lora::write_lora_file(dir / kLoraFile, lora_layers(), lora::Format::Diffusers);
      };
      c.state["lora"] = lora::adapters_state_dict(adapters);
    } else {
      c.pipeline = pipeline_weights();
    }
    if (ema) {
      c.state["unet"] = to_state_dict(weights_of(*unet, nullptr));
      c.state["ema"] = ema->state_dict();
    }
    c.state["optimizer"] = optimizer.state_dict();
    c.state["scaler"] = scaler.state_dict();
    c.state["sampler"] = sampler.state_dict();
    c.state["rng_data"] = generator_state(data_gen);
    c.state["rng_noise"] = generator_state(noise_gen);
    c.trainer_state = {{"step", step},
                       {"lr_step", lr_step},
                       {"nonfinite_run", nonfinite_run},
                       {"max_steps", max_steps},
                       {"epoch", sampler.epoch()},
                       {"examples", summary.examples},
                       {"lora", lora_on},
                       {"format", "sdtune-checkpoint-1"}};
    c.config_toml = o.effective_config;
    const fs::path dir = checkpoint_path(o.out, step);
    write_checkpoint(base, dir, c);
    last_checkpoint = dir;
    for (const auto& removed : prune_checkpoints(o.out, o.checkpoints_total_limit))
      say("removed old checkpoint " + removed.string());
    say("saved checkpoint " + dir.string());
  };
  auto validate = [&]() {
    if (!kIsMainProcess || validation.prompts.empty()) return;
    // Validation sees the EMA weights, as diffusers' script does (store, copy, restore).
    std::vector<at::Tensor> stored;
    if (ema) {
      for (const auto& p : unet_params) stored.push_back(p.detach().clone());
      ema->copy_to(unet_params);
    }
    const at::Tensor grid = run_validation(base, fp32, text_encoder, unet, vae, validation, amp,
                                           log_dir / "validation", step);
    if (metrics) metrics->image("validation/grid", grid, step);
    if (ema) {
      at::NoGradGuard no_grad;
      for (size_t i = 0; i < unet_params.size(); ++i) unet_params[i].detach().copy_(stored[i]);
    }
  };

  // ---- The loop ----------------------------------------------------------------------------
  // One micro-batch: the posterior of its images (from the VAE, or the latent cache) and its
  // captions (token ids, or the cached embeddings).
  struct Batch {
    models::DiagonalGaussian posterior;
    at::Tensor input_ids, context;
  };
  const auto load_batch = [&](const std::vector<int64_t>& items) {
    // The examples of the items: with prior preservation the instances first, then their class
    // images (diffusers' collate_fn), so that the loss can split the batch in halves.
    std::vector<int64_t> indices;
    // Item i is instance i mod n (the identity without repeats or class images).
    for (int64_t i : items) indices.push_back(i % n_instance);
    if (prior)
      for (int64_t i : items) indices.push_back(n_instance + i % n_class);
    std::vector<at::Tensor> pixels, means, logvars, ids, contexts;
    for (int64_t i : indices) {
      const data::Example& ex = examples[i];
      if (o.cache_latents) {
        // The flip is drawn as for an uncached image, so that both runs see the same data.
        const bool flip = o.random_flip && at::rand({1}, data_gen).item<float>() < 0.5f;
        const auto& d = flip ? cached_latents[i].flipped : cached_latents[i].posterior;
        means.push_back(d.mean);
        logvars.push_back(d.logvar);
      } else if (o.enable_bucket) {
        at::Tensor img = data::resize_to_bucket(data::read_example(ex), buckets[bucket_of[i]]);
        if (o.random_flip && at::rand({1}, data_gen).item<float>() < 0.5f) img = img.flip({1});
        pixels.push_back(data::to_model_input(img));
      } else {
        auto image = data::load_training_image(ex, transform, data_gen, summary.skipped);
        if (!image)
          throw Error("training image became unreadable during training", ex.image.string());
        pixels.push_back(*image);
      }
      if (o.cache_text_encoder_outputs)
        contexts.push_back(cached_text[i]);
      else
        ids.push_back(at::tensor(tokenizer.encode_padded(ex.caption), at::kLong));
    }
    Batch b;
    if (o.cache_latents) {
      b.posterior = {at::stack(means).to(device), at::stack(logvars).to(device)};
    } else {
      at::NoGradGuard no_grad;
      b.posterior = vae->encode(at::stack(pixels).to(device, weight_dtype));
    }
    if (o.cache_text_encoder_outputs)
      b.context = at::stack(contexts).to(device);
    else
      b.input_ids = at::stack(ids).to(device);
    return b;
  };

  const int64_t first_step = step;
  bool text_encoder_training = o.train_text_encoder;
  while (step < max_steps) {
    const auto step_start = std::chrono::steady_clock::now();
    if (text_encoder_training && o.stop_text_encoder_training > 0 &&
        step >= o.stop_text_encoder_training) {
      // kohya's stop_text_encoder_training: frozen from here on. Its parameters get no
      // gradients, so AdamW, clipping and the loss scaler leave them alone.
      text_encoder_training = false;
      for (const auto& p : te_params) p.set_requires_grad(false);
      text_encoder->eval();
    }
    double loss_sum = 0, instance_sum = 0, prior_sum = 0;
    bool loss_finite = true;
    for (int64_t micro = 0; micro < o.gradient_accumulation_steps; ++micro) {
      const Batch batch = load_batch(sampler.next());
      // A fresh latent from the posterior at every step, cached or not.
      const at::Tensor latents = batch.posterior.sample(noise_gen) * scaling_factor;
      const at::Tensor noise =
          sample_noise(latents.sizes(), noise_gen, o.noise_offset, latents.options());
      const at::Tensor timesteps =
          sample_timesteps(latents.size(0), num_train_timesteps, noise_gen);
      const at::Tensor noisy = add_noise(latents, noise, timesteps, schedule);
      at::Tensor loss;
      {
        AutocastGuard autocast(device.type(), amp);
        std::optional<at::NoGradGuard> frozen_text;
        if (!text_encoder_training) frozen_text.emplace();
        at::Tensor context = batch.context.defined()
                                 ? batch.context
                                 : text_encoder->forward(batch.input_ids).last_hidden_state;
        frozen_text.reset();
        const at::Tensor model_pred = unet->forward(noisy, timesteps, context);
        const at::Tensor target =
            training_target(prediction_type, latents, noise, timesteps, schedule);
        std::optional<at::Tensor> weights;
        if (o.snr_gamma)
          weights = min_snr_weights(snr(schedule, timesteps), *o.snr_gamma, prediction_type);
        const at::Tensor pred32 = model_pred.to(at::kFloat), target32 = target.to(at::kFloat);
        if (prior) {
          // DreamBooth's prior preservation: MSE on the instance half (min-SNR weighted with its
          // own timesteps) + weight · plain MSE on the class half.
          const int64_t b = pred32.size(0) / 2;
          if (weights) weights = weights->slice(0, 0, b);
          const at::Tensor instance_loss =
              diffusion_loss(pred32.slice(0, 0, b), target32.slice(0, 0, b), weights);
          const at::Tensor prior_loss =
              diffusion_loss(pred32.slice(0, b), target32.slice(0, b), std::nullopt);
          loss = instance_loss + db.prior_loss_weight * prior_loss;
          instance_sum += instance_loss.item<double>();
          prior_sum += prior_loss.item<double>();
        } else {
          loss = diffusion_loss(pred32, target32, weights);
        }
      }
      const double value = loss.item<double>();
      loss_finite = loss_finite && std::isfinite(value);
      loss_sum += value;
      scaler.scale(loss / o.gradient_accumulation_steps).backward();
    }

    reduce_gradients(trainable);
    const bool found_inf = scaler.unscale_and_check(trainable);
    const double grad_norm = clip_grad_norm(trainable, o.max_grad_norm);
    const bool skip = found_inf || !loss_finite;
    if (!skip) {
      for (int64_t g = 0; g < optimizer.num_groups(); ++g)
        optimizer.set_lr(g, lr_schedule.lr(base_lrs[g], lr_step));
      optimizer.step();
      ++lr_step;
    }
    scaler.update();
    optimizer.zero_grad();
    if (ema) ema->step(unet_params);
    ++step;
    if (skip) ++summary.skipped_steps;

    nonfinite_run = loss_finite ? 0 : nonfinite_run + 1;

    StepMetrics m;
    m.step = step;
    m.max_steps = max_steps;
    m.epoch = sampler.epoch();
    m.loss = loss_sum / o.gradient_accumulation_steps;
    m.loss_instance = instance_sum / o.gradient_accumulation_steps;
    m.loss_prior = prior_sum / o.gradient_accumulation_steps;
    m.lr = lr_schedule.lr(base_lrs[0], std::max<int64_t>(lr_step - 1, 0));
    m.grad_norm = grad_norm;
    m.loss_scale = scaler.current_scale();
    m.skipped = skip;
    m.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - step_start).count();
    if (step == first_step + 1) summary.first_loss = m.loss;
    summary.last_loss = m.loss;
    if (metrics && (step % o.log_every == 0 || step == max_steps)) {
      nlohmann::json record = {{"step", m.step},           {"epoch", m.epoch},
                               {"loss", m.loss},           {"lr", m.lr},
                               {"grad_norm", m.grad_norm}, {"skipped", m.skipped},
                               {"step_seconds", m.seconds}};
      if (scaler.enabled()) record["loss_scale"] = m.loss_scale;
      if (prior) {
        record["loss_instance"] = m.loss_instance;
        record["loss_prior"] = m.loss_prior;
      }
      if (o.train_text_encoder)
        record["lr_text_encoder"] = lr_schedule.lr(base_lrs[1], std::max<int64_t>(lr_step - 1, 0));
      metrics->write(record);
    }
    if (hooks.on_step) hooks.on_step(m);

    if (nonfinite_run >= o.max_nonfinite_steps)
      throw Error("the loss was not finite for " + std::to_string(nonfinite_run) +
                  " optimizer steps in a row (up to step " + std::to_string(step) +
                  "); stopping. " +
                  (last_checkpoint.empty()
                       ? std::string("No checkpoint was saved yet.")
                       : "The last good checkpoint is " + last_checkpoint.string() + ".") +
                  " Try a lower --learning-rate, bf16 instead of fp16, or check the data.");

    const bool last = step == max_steps;
    if (o.validation_steps > 0 && step % o.validation_steps == 0 && !last) validate();
    const bool stop = hooks.stop_requested && hooks.stop_requested->load();
    if ((o.checkpointing_steps > 0 && step % o.checkpointing_steps == 0) || last || stop) {
      // During a run of non-finite losses the weights are suspect: no checkpoint then, so that
      // pruning never removes the last good one.
      if (nonfinite_run == 0)
        save_checkpoint();
      else
        say("not saving a checkpoint at step " + std::to_string(step) + ": the loss is not finite");
    }
    if (stop && !last) {
      summary.interrupted = true;
      summary.output = last_checkpoint;
      break;
    }
  }
  summary.steps = step;
  summary.steps_this_run = step - first_step;
  summary.trainable_parameters = optimizer.num_parameters();
  summary.optimizer_state_bytes = optimizer.state_bytes();

  // ---- The final model ---------------------------------------------------------------------
  if (!summary.interrupted) {
    validate();
    if (kIsMainProcess && lora_on) {
      // diffusers' layout (load_lora_weights(OUT)) and kohya's (A1111, ComfyUI).
      fs::create_directories(o.out);
      const auto layers = lora_layers();
      lora::write_lora_file(o.out / kLoraFile, layers, lora::Format::Diffusers);
      lora::write_lora_file(o.out / kKohyaLoraFile, layers, lora::Format::Kohya);
      summary.lora_files = {o.out / kLoraFile, o.out / kKohyaLoraFile};
    } else if (kIsMainProcess) {
      save_final_model(base, o.out, pipeline_weights());
    }
    summary.output = o.out;
  }
  summary.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return summary;
}

}  // namespace sdtune::train
