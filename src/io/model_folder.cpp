#include "sdtune/io/model_folder.h"

#include <set>

#include "sdtune/error.h"

namespace sdtune::io {
namespace fs = std::filesystem;

ModelFolder ModelFolder::open(const fs::path& root) {
  if (fs::is_regular_file(root))
    // A1111/ComfyUI single files are converted into a folder first, until --model reads them.
    throw Error(
        "a file, not a diffusers model folder: for a single-file checkpoint, run `sdtune convert " +
            root.string() + " FOLDER` and use FOLDER",
        root.string());
  if (!fs::is_directory(root)) throw Error("model folder not found", root.string());
  ModelFolder folder;
  folder.root_ = root;
  folder.model_index_ = JsonConfig::load(root / "model_index.json");
  for (const auto& [key, value] : folder.model_index_.json().items()) {
    // Components are ["library", "ClassName"]; [null, null] marks an absent optional one.
    if (!value.is_array() || value.size() != 2 || !value[0].is_string() || !value[1].is_string())
      continue;
    folder.components_.push_back({key, value[0].get<std::string>(), value[1].get<std::string>()});
  }
  return folder;
}

bool ModelFolder::has_component(const std::string& name) const {
  for (const auto& c : components_)
    if (c.name == name) return true;
  return false;
}

fs::path ModelFolder::component_dir(const std::string& name) const {
  fs::path dir = root_ / name;
  if (!fs::is_directory(dir)) throw Error("component folder not found", dir.string());
  return dir;
}

JsonConfig ModelFolder::component_config(const std::string& name) const {
  fs::path dir = component_dir(name);
  return JsonConfig::load(dir / (name == "scheduler" ? "scheduler_config.json" : "config.json"));
}

namespace {

std::vector<fs::path> shards_of(const fs::path& index_path) {
  JsonConfig index = JsonConfig::load(index_path);
  const auto& map = index.json().find("weight_map");
  if (map == index.json().end() || !map->is_object())
    throw Error("missing required key", index_path.string(), "weight_map");
  std::set<std::string> names;
  for (const auto& [tensor, file] : map->items()) {
    if (!file.is_string())
      throw Error("shard file name is not a string", index_path.string(), tensor);
    names.insert(file.get<std::string>());
  }
  std::vector<fs::path> files;
  for (const auto& name : names) {
    fs::path shard = index_path.parent_path() / name;
    if (!fs::exists(shard))
      throw Error("shard listed in the index is missing: " + name, index_path.string());
    files.push_back(shard);
  }
  return files;
}

std::vector<fs::path> find_variant(const fs::path& dir, const std::string& variant) {
  const std::string suffix = variant.empty() ? "" : "." + variant;
  for (const char* stem : {"diffusion_pytorch_model", "model"}) {
    fs::path single = dir / (std::string(stem) + suffix + ".safetensors");
    if (fs::exists(single)) return {single};
    fs::path index = dir / (std::string(stem) + suffix + ".safetensors.index.json");
    if (fs::exists(index)) return shards_of(index);
  }
  return {};
}

}  // namespace

std::vector<fs::path> find_weight_files(const fs::path& component_dir, const std::string& variant) {
  if (!fs::is_directory(component_dir))
    throw Error("component folder not found", component_dir.string());
  std::vector<fs::path> files = find_variant(component_dir, variant);
  if (files.empty() && variant.empty()) files = find_variant(component_dir, "fp16");
  if (files.empty())
    throw Error("no safetensors weights found (looked for diffusion_pytorch_model" +
                    (variant.empty() ? std::string() : "." + variant) +
                    ".safetensors, model.safetensors and their sharded .index.json)",
                component_dir.string());
  return files;
}

}  // namespace sdtune::io
