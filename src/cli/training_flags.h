#pragma once
// The options that the training commands (`train`, `dreambooth`, `train-vae`) share, registered
// in one place under the names diffusers' scripts give them. Every flag is also a key of the
// TOML file given with --config.
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "cli/number_checks.h"
#include "sdtune/data/caption_dataset.h"

namespace sdtune::cli {

struct TrainingFlags {
  std::string config, model, data, out;
  bool quiet = false;
};

// Registers --config, --model, DATA (`data_flags`, e.g. "--data,--train-data-dir"), --out,
// --variant, --device, --image-column, --caption-column, --resolution, --center-crop,
// --random-flip, --allow-outside-data, --max-image-pixels and --batch-size on `cmd`. As with
// argparse, a flag given twice takes its last value.
template <typename Options>
void add_training_options(CLI::App* cmd, TrainingFlags& f, Options& o,
                          const std::string& data_flags, const std::string& data_help,
                          const std::string& out_help) {
  cmd->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  cmd->add_option("--config", f.config,
                  "TOML file of options (keys are the flag names); flags given win over it");
  cmd->add_option(
      "--model,--pretrained-model-name-or-path", f.model,
      "Base pipeline folder, or single-file checkpoint (.safetensors, .ckpt) (required)");
  cmd->add_option(data_flags, f.data, data_help);
  cmd->add_option("--out,--output-dir", f.out, out_help);
  cmd->add_option("--variant", o.variant, "Base weights variant (fp16)");
  cmd->add_option("--device", o.device, "cpu, cuda or cuda:N")->capture_default_str();
  cmd->add_option("--image-column", o.image_column)->capture_default_str();
  cmd->add_option("--caption-column", o.caption_column)->capture_default_str();
  cmd->add_option("--resolution", o.resolution)->capture_default_str()->check(checks::at_least(8));
  cmd->add_flag("--center-crop", o.center_crop, "Center crop (default: random crop)");
  cmd->add_flag("--random-flip", o.random_flip, "Random horizontal flip");
  cmd->add_flag("--allow-outside-data", o.allow_outside_data,
                "Read dataset entries (metadata rows, symlinks, caption files) whose real path "
                "lies outside the dataset folder; refused by default, as a downloaded dataset "
                "could name any file of yours");
  cmd->add_option("--max-image-pixels", o.max_image_pixels,
                  "Skip images declaring more pixels than this, before decoding them "
                  "(decompression bombs; PIL's limit by default)")
      ->capture_default_str()
      ->check(checks::at_least(1));
  cmd->add_option("--batch-size,--train-batch-size", o.batch_size)
      ->capture_default_str()
      ->check(checks::at_least(1));
}

// Registers the optimizer options both trainers have: --max-steps, --learning-rate,
// --lr-warmup-steps, --adam-weight-decay, --max-grad-norm.
template <typename Options>
void add_optimizer_options(CLI::App* cmd, Options& o, const std::string& max_steps_help) {
  cmd->add_option("--max-steps,--max-train-steps", o.max_steps, max_steps_help)
      ->capture_default_str()
      ->check(checks::non_negative());
  cmd->add_option("--learning-rate", o.learning_rate)
      ->capture_default_str()
      ->check(checks::positive());
  cmd->add_option("--lr-warmup-steps", o.lr_warmup_steps)
      ->capture_default_str()
      ->check(checks::non_negative());
  cmd->add_option("--adam-weight-decay", o.adam_weight_decay)
      ->capture_default_str()
      ->check(checks::non_negative());
  cmd->add_option("--max-grad-norm", o.max_grad_norm, "0 disables clipping")
      ->capture_default_str()
      ->check(checks::non_negative());
}

// Registers --seed, --log-every and --quiet.
template <typename Options>
void add_run_options(CLI::App* cmd, TrainingFlags& f, Options& o) {
  cmd->add_option("--seed", o.seed)->capture_default_str();
  cmd->add_option("--log-every", o.log_every, "Log metrics every N steps")
      ->capture_default_str()
      ->check(checks::at_least(1));
  cmd->add_flag("--quiet", f.quiet, "No progress output");
}

// The run summary's lines on the data, on stdout: "examples: N used, M skipped (K outside the
// dataset folder)", then each skipped file and why.
void print_examples(int64_t used, const std::vector<data::Skipped>& skipped);

// The --config file applied to `cmd` (flags given win over it); nothing when `config` is empty.
void apply_toml_config_file(CLI::App* cmd, const std::string& config);
// An Error for a missing --model, data flag (`data_flag`, as the user knows it) or --out.
void require_training_flags(const TrainingFlags& f, const std::string& data_flag);

// After parsing: applies the --config file, checks the required flags and sets the options'
// model, data and out.
template <typename Options>
void finish_training_flags(CLI::App* cmd, const TrainingFlags& f, Options& o,
                           const std::string& data_flag) {
  apply_toml_config_file(cmd, f.config);
  require_training_flags(f, data_flag);
  o.model = f.model;
  o.data = f.data;
  o.out = f.out;
}

}  // namespace sdtune::cli
