#pragma once
// Each sdtune command registers itself as a CLI11 subcommand; main() dispatches and turns errors
// into one line on stderr and a non-zero exit.
#include <CLI/CLI.hpp>

namespace sdtune::cli {

void add_inspect(CLI::App& app);
void add_tokenize(CLI::App& app);
void add_forward(CLI::App& app);
void add_generate(CLI::App& app);
void add_grid(CLI::App& app);
void add_train(CLI::App& app);
void add_dreambooth(CLI::App& app);
void add_train_vae(CLI::App& app);
void add_init(CLI::App& app);
void add_lora(CLI::App& app);
void add_convert(CLI::App& app);
void add_caption(CLI::App& app);
void add_serve(CLI::App& app);

}  // namespace sdtune::cli
