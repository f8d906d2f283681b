#pragma once
// Full fine-tuning of a Stable Diffusion pipeline on captioned images: the loop of diffusers'
// examples/text_to_image/train_text_to_image.py (and, with train_text_encoder, of kohya's
// fine_tune.py), with checkpoints that resume bit for bit.
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "sdtune/data/caption_dataset.h"
#include "sdtune/train/train_options.h"

namespace sdtune::train {

// What one optimizer step reports (logged as JSONL and TensorBoard scalars, and to `on_step`).
struct StepMetrics {
  int64_t step = 0;  // optimizer steps done, 1 after the first
  int64_t max_steps = 0;
  int64_t epoch = 0;
  double loss = 0;  // mean over the accumulated micro-batches (unscaled)
  // DreamBooth with prior preservation: the two terms of loss = instance + weight · prior.
  double loss_instance = 0, loss_prior = 0;
  double lr = 0;          // UNet learning rate used by this step
  double grad_norm = 0;   // before clipping
  double loss_scale = 1;  // fp16 dynamic loss scale after this step
  bool skipped = false;   // non-finite loss or gradients: parameters not updated
  double seconds = 0;     // wall time of this step
};

struct TrainHooks {
  std::function<void(const StepMetrics&)> on_step;
  // Polled after every optimizer step; when it turns true a checkpoint is saved and train()
  // returns (Ctrl-C / SIGTERM in the CLI).
  const std::atomic<bool>* stop_requested = nullptr;
  // One-line status messages ("saved checkpoint ...") for the user; stderr when empty.
  std::function<void(const std::string&)> message;

  // Passes `m` to `message`, or writes "sdtune: m" to stderr when there is none.
  void say(const std::string& m) const;
};

struct TrainSummary {
  int64_t rank = 0, world_size = 1;  // of a data-parallel run; only rank 0 writes
  int64_t steps = 0;                 // optimizer steps done in total (across resumes)
  int64_t steps_this_run = 0;
  int64_t examples = 0;  // usable training examples
  std::vector<data::Skipped> skipped;
  std::vector<std::pair<std::string, int64_t>> buckets;  // "WxH", examples (--enable-bucket)
  // Cache entries read back and computed this run (--cache-latents, --cache-text-encoder-outputs).
  int64_t latent_cache_hits = 0, latent_cache_computed = 0;
  int64_t text_cache_hits = 0, text_cache_computed = 0;
  // DreamBooth: instance and class examples used, class images found and generated.
  int64_t instance_examples = 0, class_examples = 0;
  int64_t class_images_found = 0, class_images_generated = 0;
  double first_loss = 0, last_loss = 0;  // mean loss of this run's first and last logged steps
  int64_t skipped_steps = 0;             // non-finite steps skipped this run
  // Parameters the optimizer updates, and its state's size at the end (AdamW: two moments each).
  int64_t trainable_parameters = 0, optimizer_state_bytes = 0;
  std::vector<std::filesystem::path> lora_files;  // a LoRA run's result
  std::filesystem::path single_file;              // with --save-single-file
  bool interrupted = false;
  std::filesystem::path output;  // the final pipeline (out), or the interrupt checkpoint
  std::filesystem::path resumed_from;
  double seconds = 0;
};

// Runs the whole training described by `options`. Throws Error for bad options, an unusable
// dataset, an unreadable model, or repeated non-finite losses (the last good checkpoint stays).
TrainSummary train(const TrainOptions& options, const TrainHooks& hooks = {});

}  // namespace sdtune::train
