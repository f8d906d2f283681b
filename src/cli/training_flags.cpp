#include "cli/training_flags.h"

#include <algorithm>
#include <cstdio>
#include <utility>

#include "cli/toml_config.h"
#include "sdtune/error.h"

namespace sdtune::cli {

void apply_toml_config_file(CLI::App* cmd, const std::string& config) {
  if (!config.empty()) apply_toml_config(cmd, config);
}

void print_examples(int64_t used, const std::vector<data::Skipped>& skipped) {
  const auto outside = std::count_if(skipped.begin(), skipped.end(),
                                     [](const data::Skipped& s) { return s.outside_dataset; });
  std::printf("examples: %lld used, %zu skipped", static_cast<long long>(used), skipped.size());
  if (outside > 0)
    std::printf(" (%lld outside the dataset folder)", static_cast<long long>(outside));
  std::printf("\n");
  for (const auto& s : skipped)
    std::printf("  skipped %s: %s\n", s.path.string().c_str(), s.reason.c_str());
}

void require_training_flags(const TrainingFlags& f, const std::string& data_flag) {
  for (const auto& [flag, value] : {std::pair<std::string, const std::string*>{"--model", &f.model},
                                    {data_flag, &f.data},
                                    {"--out", &f.out}})
    if (value->empty()) throw Error(flag + " is required (on the command line or in --config)");
}

}  // namespace sdtune::cli
