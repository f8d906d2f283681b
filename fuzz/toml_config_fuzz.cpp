// libFuzzer target: arbitrary bytes as a training run's --config TOML file, applied by
// apply_toml_config to a command with options of every kind the training commands have (string,
// int64, uint64, double, optional numbers, flags, TakeLast scalars, a TakeAll list, a
// comma-delimited list, a range check), after a command line that gives one of them. A bad file
// must end in sdtune::Error (or a CLI11 error). What applies must be written back by
// effective_config as TOML that reads again and applies to the same configuration.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <toml++/toml.h>
#include <CLI/CLI.hpp>

#include "cli/toml_config.h"
#include "fuzz_common.h"
#include "sdtune/error.h"

namespace {

using sdtune::fuzz::check;

struct Options {
  std::string config, model, data, out, device = "cpu", lr_scheduler = "constant";
  std::string mixed_precision = "no", prediction_type, resume_from_checkpoint;
  int64_t resolution = 512, batch_size = 16, max_steps = 0, lr_warmup_steps = 500;
  int64_t checkpointing_steps = 500;
  uint64_t seed = 0;
  double learning_rate = 1e-4, adam_beta1 = 0.9, adam_epsilon = 1e-8, noise_offset = 0.0;
  bool center_crop = false, random_flip = false, use_ema = false, quiet = false;
  std::optional<double> snr_gamma, lora_alpha;
  std::optional<int64_t> lora_rank;
  std::vector<std::string> validation_prompts, lora_layers = {"to_q", "to_k", "to_v", "to_out.0"};
};

// The shape of `sdtune train`'s options (src/cli/train.cpp, training_flags.h), a few of each kind.
std::unique_ptr<CLI::App> make_command(Options& o) {
  auto cmd = std::make_unique<CLI::App>("fuzzed training command", "train");
  cmd->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  cmd->add_option("--config", o.config);
  cmd->add_option("--model,--pretrained-model-name-or-path", o.model);
  cmd->add_option("--data,--train-data-dir", o.data);
  cmd->add_option("--out,--output-dir", o.out);
  cmd->add_option("--device", o.device)->capture_default_str();
  cmd->add_option("--resolution", o.resolution)->capture_default_str();
  cmd->add_flag("--center-crop", o.center_crop);
  cmd->add_flag("--random-flip", o.random_flip);
  cmd->add_option("--batch-size,--train-batch-size", o.batch_size)
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-steps,--max-train-steps", o.max_steps)->capture_default_str();
  cmd->add_option("--learning-rate", o.learning_rate)->capture_default_str();
  cmd->add_option("--lr-warmup-steps", o.lr_warmup_steps)->capture_default_str();
  cmd->add_option("--lr-scheduler", o.lr_scheduler)->capture_default_str();
  cmd->add_option("--adam-beta1", o.adam_beta1)->capture_default_str()->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--adam-epsilon", o.adam_epsilon)->capture_default_str();
  cmd->add_option("--prediction-type", o.prediction_type);
  cmd->add_option("--snr-gamma", o.snr_gamma);
  cmd->add_option("--noise-offset", o.noise_offset)->capture_default_str();
  cmd->add_option("--mixed-precision", o.mixed_precision)->capture_default_str();
  cmd->add_flag("--use-ema", o.use_ema);
  cmd->add_option("--checkpointing-steps", o.checkpointing_steps)->capture_default_str();
  cmd->add_option("--resume-from-checkpoint", o.resume_from_checkpoint);
  cmd->add_option("--validation-prompt", o.validation_prompts)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  cmd->add_option("--lora-rank,--rank", o.lora_rank);
  cmd->add_option("--lora-alpha", o.lora_alpha);
  cmd->add_option("--lora-layers", o.lora_layers)->delimiter(',')->capture_default_str();
  cmd->add_option("--seed", o.seed)->capture_default_str();
  cmd->add_flag("--quiet", o.quiet);
  return cmd;
}

// Parses the command line "--max-steps 2" (which the file must not override), then applies
// `file`; the configuration as effective_config writes it, or nullopt when the file is refused.
std::optional<std::string> apply(const std::filesystem::path& file) {
  Options o;
  auto cmd = make_command(o);
  std::vector<std::string> args = {"2", "--max-steps"};  // CLI11 takes them in reverse
  cmd->parse(args);
  try {
    sdtune::cli::apply_toml_config(cmd.get(), file);
  } catch (const sdtune::Error&) {
    return std::nullopt;
  } catch (const CLI::Error&) {
    return std::nullopt;
  }
  check(o.max_steps == 2, "the file overrode an option given on the command line");
  return sdtune::cli::effective_config(cmd.get(), {});
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = sdtune::fuzz::scratch_dir() / "run.toml";
  sdtune::fuzz::write_file(path, std::string_view(reinterpret_cast<const char*>(data), size));
  const std::optional<std::string> effective = apply(path);
  if (!effective) return 0;

  // train_config.toml, saved with each checkpoint, must reproduce the run when given to --config.
  try {
    [[maybe_unused]] const toml::table reread = toml::parse(*effective);
  } catch (const toml::parse_error& e) {
    check(false, "effective_config wrote invalid TOML",
          *effective + "\n" + std::string(e.description()));
  }
  const auto again_path = sdtune::fuzz::scratch_dir() / "effective.toml";
  sdtune::fuzz::write_file(again_path, *effective);
  const std::optional<std::string> again = apply(again_path);
  check(again.has_value(), "effective_config's TOML is refused by apply_toml_config", *effective);
  check(*again == *effective, "effective_config's TOML applies to another configuration",
        *effective + "---\n" + *again);
  return 0;
}
