#pragma once
// A diffusers pipeline folder: model_index.json plus one subfolder per component
// (unet/, vae/, text_encoder/, tokenizer/, scheduler/), each with its config and weights.
#include <filesystem>
#include <string>
#include <vector>

#include "sdtune/io/json_config.h"

namespace sdtune::io {

struct Component {
  std::string name;        // "unet"
  std::string library;     // "diffusers"
  std::string class_name;  // "UNet2DConditionModel"
};

class ModelFolder {
 public:
  // Reads ROOT/model_index.json. Errors name the folder or file: missing folder, missing or
  // malformed model_index.json.
  static ModelFolder open(const std::filesystem::path& root);

  const std::filesystem::path& root() const { return root_; }
  const JsonConfig& model_index() const { return model_index_; }
  // Components declared in model_index.json (entries of the form "name": [library, class]).
  const std::vector<Component>& components() const { return components_; }
  bool has_component(const std::string& name) const;
  // ROOT/name; an error when it is not a folder.
  std::filesystem::path component_dir(const std::string& name) const;
  // ROOT/name/config.json (scheduler: scheduler_config.json).
  JsonConfig component_config(const std::string& name) const;

 private:
  std::filesystem::path root_;
  JsonConfig model_index_{nlohmann::json::object(), ""};
  std::vector<Component> components_;
};

// The safetensors files holding a component's weights, in this order of preference:
//   <stem>[.<variant>].safetensors, then <stem>[.<variant>].safetensors.index.json (sharded),
// where stem is diffusion_pytorch_model or model. With no variant asked for, an ".fp16" variant is
// used when it is the only one present. Throws an Error naming the folder when none is found, or
// naming the index file when it is malformed or names a missing shard.
std::vector<std::filesystem::path> find_weight_files(const std::filesystem::path& component_dir,
                                                     const std::string& variant = "");

}  // namespace sdtune::io
