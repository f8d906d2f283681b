#pragma once
// The range each numeric flag accepts, as CLI11 validators. They run on the command line and on
// every value a --config TOML file sets, so a bad number stops before any work, in a one-line
// error that names its flag ("--steps: must be at least 1, got 0"), instead of deep inside a
// tensor operation. Every check refuses NaN and the infinities, which CLI11 (like strtod) reads as
// doubles and TOML writes as nan / inf.
#include <CLI/CLI.hpp>

namespace sdtune::cli::checks {

CLI::Validator finite();
CLI::Validator positive();      // > 0
CLI::Validator non_negative();  // >= 0
CLI::Validator at_least(double minimum);
CLI::Validator at_most(double maximum);
CLI::Validator in_range(double low, double high);  // [low, high]
CLI::Validator below_one();                        // [0, 1): probabilities, Adam's betas

// The checks every number of its type needs, on every option of `app` and its subcommands, on top
// of the option's own range: finite() for floating-point options (no flag of sdtune means anything
// with NaN or an infinity) and non_negative() for unsigned ones (CLI11 would wrap "-1" to 2^64-1).
void check_every_number(CLI::App& app);

}  // namespace sdtune::cli::checks
