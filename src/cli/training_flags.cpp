#include "cli/training_flags.h"

#include <utility>

#include "cli/toml_config.h"
#include "sdtune/error.h"

namespace sdtune::cli {

void apply_toml_config_file(CLI::App* cmd, const std::string& config) {
  if (!config.empty()) apply_toml_config(cmd, config);
}

void require_training_flags(const TrainingFlags& f, const std::string& data_flag) {
  for (const auto& [flag, value] : {std::pair<std::string, const std::string*>{"--model", &f.model},
                                    {data_flag, &f.data},
                                    {"--out", &f.out}})
    if (value->empty()) throw Error(flag + " is required (on the command line or in --config)");
}

}  // namespace sdtune::cli
