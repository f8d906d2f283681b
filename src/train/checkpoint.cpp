#include "sdtune/train/checkpoint.h"

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <regex>
#include <sstream>

#include "sdtune/error.h"
#include "sdtune/io/atomic_write.h"
#include "sdtune/io/remove_tree.h"
#include "sdtune/io/tensor.h"

namespace sdtune::train {
namespace fs = std::filesystem;
namespace {

const char* kStateDir = "training_state";
const char* kTrainerState = "trainer_state.json";

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
  f.close();
  if (!f) throw Error("cannot write file", path.string());
}

// DIR/.NAME<tag><pid> for DIR/NAME: a hidden temporary next to `path`.
fs::path hidden_sibling(const fs::path& path, const char* tag) {
  std::string name = ".";
  name.append(path.filename().string());
  name.append(tag);
  name.append(std::to_string(::getpid()));
  return path.parent_path() / name;
}

// Moves `from` to `to`, replacing `to` (a file or a folder) if it exists.
void replace_with(const fs::path& from, const fs::path& to, const fs::path& graveyard) {
  std::error_code ec;
  if (fs::exists(to)) {
    fs::rename(to, graveyard / to.filename(), ec);
    if (ec) throw Error("cannot move aside: " + ec.message(), to.string());
  }
  fs::rename(from, to, ec);
  if (ec) throw Error("cannot move into place: " + ec.message(), to.string());
}

}  // namespace

fs::path checkpoint_path(const fs::path& out, int64_t step) {
  return out / ("checkpoint-" + std::to_string(step));
}

void write_checkpoint(const io::ModelFolder& base, const fs::path& dir,
                      const CheckpointContents& contents) {
  io::publish_folder(dir, [&](const fs::path& staging) {
    if (contents.pipeline) io::write_pipeline_folder(base, staging, *contents.pipeline);
    if (contents.write_files) contents.write_files(staging);
    const fs::path state_dir = staging / kStateDir;
    fs::create_directory(state_dir);
    for (const auto& [name, tensors] : contents.state) {
      std::vector<std::pair<std::string, at::Tensor>> list(tensors.begin(), tensors.end());
      for (auto& [key, t] : list) t = t.detach().cpu().contiguous();
      io::write_tensors(state_dir / (name + ".safetensors"), list);
    }
    write_text(state_dir / kTrainerState, contents.trainer_state.dump(2) + "\n");
    if (!contents.config_toml.empty())
      write_text(staging / "train_config.toml", contents.config_toml);
  });
}

LoadedCheckpoint read_checkpoint(const fs::path& dir) {
  if (!fs::is_directory(dir)) throw Error("checkpoint folder not found", dir.string());
  const fs::path state_dir = dir / kStateDir;
  const fs::path json_path = state_dir / kTrainerState;
  if (!fs::is_regular_file(json_path))
    throw Error(
        "not an sdtune checkpoint (no " + std::string(kStateDir) + "/" + kTrainerState + ")",
        dir.string());
  LoadedCheckpoint ckpt;
  ckpt.dir = dir;
  std::ifstream f(json_path);
  std::stringstream s;
  s << f.rdbuf();
  try {
    ckpt.trainer_state = nlohmann::json::parse(s.str());
  } catch (const nlohmann::json::exception& e) {
    throw Error(std::string("invalid JSON: ") + e.what(), json_path.string());
  }
  for (const auto& entry : fs::directory_iterator(state_dir)) {
    if (entry.path().extension() != ".safetensors") continue;
    const auto tensors = io::read_tensors(entry.path());
    ckpt.state[entry.path().stem().string()] = io::StateDict(tensors.begin(), tensors.end());
  }
  return ckpt;
}

std::vector<std::pair<int64_t, fs::path>> list_checkpoints(const fs::path& out) {
  std::vector<std::pair<int64_t, fs::path>> found;
  if (!fs::is_directory(out)) return found;
  static const std::regex name("checkpoint-([0-9]+)");
  for (const auto& entry : fs::directory_iterator(out)) {
    std::smatch m;
    const std::string filename = entry.path().filename().string();
    if (!entry.is_directory() || !std::regex_match(filename, m, name)) continue;
    if (!fs::is_regular_file(entry.path() / kStateDir / kTrainerState)) continue;
    found.emplace_back(std::stoll(m[1].str()), entry.path());
  }
  std::sort(found.begin(), found.end());
  return found;
}

std::vector<fs::path> prune_checkpoints(const fs::path& out, int64_t keep) {
  std::vector<fs::path> removed;
  if (keep <= 0) return removed;
  auto all = list_checkpoints(out);
  for (size_t i = 0; i + keep < all.size(); ++i) {
    io::retire_folder(all[i].second);
    removed.push_back(all[i].second);
  }
  return removed;
}

void save_final_model(const io::ModelFolder& base, const fs::path& out,
                      const io::SavedWeights& weights) {
  // Temporary names (io::is_temporary_name), so that a killed run's are removed by the next one.
  const fs::path staging = hidden_sibling(out / "final-model", ".tmp-");
  const fs::path graveyard = hidden_sibling(out / "final-model", ".old-");
  std::error_code ec;
  fs::create_directories(out);
  io::remove_tree(staging, ec);
  io::remove_tree(graveyard, ec);
  io::save_pipeline(base, staging, weights);
  fs::create_directory(graveyard);
  // Components first, model_index.json last: until it is in place, a loader does not see a
  // pipeline (or sees the previous one).
  std::vector<fs::path> entries;
  for (const auto& entry : fs::directory_iterator(staging))
    if (entry.path().filename() != "model_index.json") entries.push_back(entry.path());
  std::sort(entries.begin(), entries.end());
  entries.push_back(staging / "model_index.json");
  for (const auto& from : entries) replace_with(from, out / from.filename(), graveyard);
  io::remove_tree(staging, ec);
  io::remove_tree(graveyard, ec);
}

}  // namespace sdtune::train
