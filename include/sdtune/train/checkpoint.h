#pragma once
// Training checkpoints: OUT/checkpoint-STEP/ is a complete diffusers pipeline folder (usable for
// generation as it is; for LoRA runs the LoRA file instead) plus training_state/ with everything a
// resumed run needs to continue bit for bit: trained weights (when the pipeline holds EMA weights
// instead), optimizer, EMA, loss scaler, RNG and data-order states, and trainer_state.json (step
// counters). The effective configuration is saved next to them as train_config.toml.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "sdtune/io/model_folder.h"
#include "sdtune/io/pipeline_writer.h"
#include "sdtune/io/state_dict.h"

namespace sdtune::train {

struct CheckpointContents {
  // Weights of the pipeline folder; none for a LoRA run, whose checkpoint holds its adapters
  // (written by `write_files`) rather than a copy of the whole model.
  std::optional<io::SavedWeights> pipeline;
  std::function<void(const std::filesystem::path& dir)> write_files;  // more files, into `dir`
  std::map<std::string, io::StateDict> state;  // training_state/NAME.safetensors
  nlohmann::json trainer_state;                // training_state/trainer_state.json
  std::string config_toml;                     // train_config.toml ("" = none)
};

// OUT/checkpoint-STEP.
std::filesystem::path checkpoint_path(const std::filesystem::path& out, int64_t step);

// Writes `dir` atomically (io::publish_folder): everything goes to a temporary sibling first,
// which is renamed into place once complete and flushed (replacing an existing `dir`), so a crash
// at any moment leaves the earlier checkpoints intact and never a half-written checkpoint-STEP/.
void write_checkpoint(const io::ModelFolder& base, const std::filesystem::path& dir,
                      const CheckpointContents& contents);

struct LoadedCheckpoint {
  std::filesystem::path dir;
  std::map<std::string, io::StateDict> state;
  nlohmann::json trainer_state;
};

// Reads training_state/ of `dir`; an Error naming the file when something is missing or corrupt.
LoadedCheckpoint read_checkpoint(const std::filesystem::path& dir);

// The complete checkpoint-STEP folders under `out`, by step, oldest first.
std::vector<std::pair<int64_t, std::filesystem::path>> list_checkpoints(
    const std::filesystem::path& out);

// Removes the oldest checkpoints so that at most `keep` remain (keep <= 0: none removed), each
// renamed aside before it is deleted (io::retire_folder): a crash midway never leaves a
// half-deleted folder that looks like a checkpoint. Returns the removed folders.
std::vector<std::filesystem::path> prune_checkpoints(const std::filesystem::path& out,
                                                     int64_t keep);

// Writes the final pipeline into `out`, which may already hold checkpoints and logs: the pipeline
// is written complete to a hidden folder first, then each component is moved into `out`, replacing
// what an earlier run left there, with model_index.json last.
void save_final_model(const io::ModelFolder& base, const std::filesystem::path& out,
                      const io::SavedWeights& weights);

}  // namespace sdtune::train
