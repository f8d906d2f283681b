// sdtune train-vae: the VAE of a pipeline trained on images (reconstruction + KL), for models made
// from scratch. Every flag is also a key of the TOML file given with --config.
#include <cstdio>

#include "cli/commands.h"
#include "cli/progress.h"
#include "cli/stop_signal.h"
#include "cli/toml_config.h"
#include "cli/training_flags.h"
#include "sdtune/error.h"
#include "sdtune/models/single_file.h"
#include "sdtune/train/vae_trainer.h"

namespace sdtune::cli {
namespace {

struct VaeFlags : TrainingFlags {
  train::VaeTrainOptions o;
};

void run(CLI::App* cmd, VaeFlags& f) {
  auto& o = f.o;
  finish_training_flags(cmd, f, o, "--data");
  o.model = models::open_model(o.model).root().string();  // a single file: read once into the cache

  train::TrainHooks hooks;
  StopOnSignal stop;  // Ctrl-C: save the VAE trained so far
  hooks.stop_requested = stop.flag();
  Progress progress("train-vae", f.quiet);
  hooks.on_step = [&](const train::StepMetrics& m) { progress.update(m.step, m.max_steps); };
  hooks.message = [&](const std::string& m) { progress.message(m); };
  train::VaeTrainSummary s;
  try {
    s = train::train_vae(o, hooks);
  } catch (...) {
    progress.finish();
    throw;
  }
  progress.finish();
  print_examples(s.examples, s.skipped);
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
  add_training_options(cmd, *f, o, "--data,--train-data-dir",
                       "Image folder or parquet dataset (required)",
                       "Output pipeline folder, logs/ inside (required)");
  add_optimizer_options(cmd, o, "Optimizer steps");
  cmd->add_option("--kl-weight", o.kl_weight, "Weight of the KL term (per latent element)")
      ->capture_default_str()
      ->check(checks::non_negative());
  cmd->add_option("--scaling-images", o.scaling_images,
                  "Images whose latents set the config's scaling_factor")
      ->capture_default_str()
      ->check(checks::at_least(1));
  add_run_options(cmd, *f, o);
  cmd->callback([cmd, f] { run(cmd, *f); });
}

}  // namespace sdtune::cli
