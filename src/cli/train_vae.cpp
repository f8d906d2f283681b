// sdtune train-vae: the VAE of a pipeline trained on images (reconstruction + KL), for models made
// from scratch. Every flag is also a key of the TOML file given with --config.
#include <cstdio>

#include "cli/commands.h"
#include "cli/progress.h"
#include "cli/stop_signal.h"
#include "cli/toml_config.h"
#include "sdtune/error.h"
#include "sdtune/train/vae_trainer.h"

namespace sdtune::cli {
namespace {

struct VaeFlags {
  train::VaeTrainOptions o;
  std::string model, data, out, config;
  bool quiet = false;
};

void run(CLI::App* cmd, VaeFlags& f) {
  auto& o = f.o;
  if (!f.config.empty()) apply_toml_config(cmd, f.config);
  for (const auto& [flag, value] : {std::pair<const char*, const std::string*>{"--model", &f.model},
                                    {"--data", &f.data},
                                    {"--out", &f.out}})
    if (value->empty())
      throw Error(std::string(flag) + " is required (on the command line or in --config)");
  o.model = f.model;
  o.data = f.data;
  o.out = f.out;

  train::TrainHooks hooks;
  StopOnSignal stop;  // Ctrl-C: save the VAE trained so far
  hooks.stop_requested = stop.flag();
  Progress progress("train-vae", f.quiet);
  hooks.on_step = [&](const train::StepMetrics& m) { progress.update(m.step, m.max_steps); };
  hooks.message = [&](const std::string& m) {
    if (!f.quiet) std::fprintf(stderr, "sdtune: %s\n", m.c_str());
  };
  train::VaeTrainSummary s;
  try {
    s = train::train_vae(o, hooks);
  } catch (...) {
    progress.finish();
    throw;
  }
  progress.finish();
  std::printf("examples: %lld used, %zu skipped\n", static_cast<long long>(s.examples),
              s.skipped.size());
  for (const auto& sk : s.skipped)
    std::printf("  skipped %s: %s\n", sk.path.string().c_str(), sk.reason.c_str());
  std::printf("steps: %lld\n", static_cast<long long>(s.steps));
  std::printf("reconstruction mse: first %.6f, last %.6f\n", s.first_reconstruction,
              s.last_reconstruction);
  std::printf("scaling factor: %.6f\n", s.scaling_factor);
  std::printf("time: %.1f s\n", s.seconds);
  std::printf("model: %s\n", s.output.string().c_str());
}

}  // namespace

void add_train_vae(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "train-vae", "Train a pipeline's VAE on images (reconstruction + KL), e.g. for a new model");
  auto f = std::make_shared<VaeFlags>();
  auto& o = f->o;
  // As with argparse, a flag given twice takes its last value.
  cmd->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  cmd->add_option("--config", f->config, "TOML file with any of these options");
  cmd->add_option("--model,--pretrained-model-name-or-path", f->model,
                  "Pipeline folder whose VAE is trained");
  cmd->add_option("--data,--train-data-dir", f->data, "Image folder or parquet dataset");
  cmd->add_option("--out,--output-dir", f->out, "Output pipeline folder (logs/ inside)");
  cmd->add_option("--variant", o.variant, "Base weights variant (fp16)");
  cmd->add_option("--device", o.device, "cpu, cuda or cuda:N")->capture_default_str();
  cmd->add_option("--image-column", o.image_column)->capture_default_str();
  cmd->add_option("--caption-column", o.caption_column)->capture_default_str();
  cmd->add_option("--resolution", o.resolution)->capture_default_str();
  cmd->add_flag("--center-crop", o.center_crop, "Center crop (default: random crop)");
  cmd->add_flag("--random-flip", o.random_flip, "Random horizontal flip");
  cmd->add_option("--batch-size,--train-batch-size", o.batch_size)->capture_default_str();
  cmd->add_option("--max-steps,--max-train-steps", o.max_steps)->capture_default_str();
  cmd->add_option("--learning-rate", o.learning_rate)->capture_default_str();
  cmd->add_option("--lr-warmup-steps", o.lr_warmup_steps)->capture_default_str();
  cmd->add_option("--adam-weight-decay", o.adam_weight_decay)->capture_default_str();
  cmd->add_option("--max-grad-norm", o.max_grad_norm, "0 disables clipping")->capture_default_str();
  cmd->add_option("--kl-weight", o.kl_weight, "Weight of the KL term (per latent element)")
      ->capture_default_str();
  cmd->add_option("--scaling-images", o.scaling_images,
                  "Images whose latents set the config's scaling_factor")
      ->capture_default_str();
  cmd->add_option("--seed", o.seed)->capture_default_str();
  cmd->add_option("--log-every", o.log_every, "Log metrics every N steps")->capture_default_str();
  cmd->add_flag("--quiet", f->quiet, "No progress output");
  cmd->callback([cmd, f] { run(cmd, *f); });
}

}  // namespace sdtune::cli
