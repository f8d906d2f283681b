#pragma once
// `--config FILE.toml` for the training commands: every flag is also a TOML key (kebab-case as
// on the command line, or snake_case as in the diffusers scripts' argument names), and a value
// given on the command line wins over the file's. The reverse, effective_config(), writes the
// options a run actually used as such a file, saved with each checkpoint.
#include <filesystem>
#include <set>
#include <string>

#include <CLI/CLI.hpp>

namespace sdtune::cli {

// Sets every option of `cmd` named in `file` that the command line did not give. Unknown keys,
// tables and unreadable values are an Error naming the file and key. Call after parsing.
void apply_toml_config(CLI::App* cmd, const std::filesystem::path& file);

// The options of `cmd` with their values (given or default) as TOML; options in `skip`
// (long names without dashes) and options with neither are left out.
std::string effective_config(const CLI::App* cmd, const std::set<std::string>& skip);

}  // namespace sdtune::cli
