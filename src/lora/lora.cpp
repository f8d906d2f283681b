#include "sdtune/lora/lora.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <set>

#include "sdtune/error.h"
#include "sdtune/formats/lora_keys.h"
#include "sdtune/formats/single_file_keys.h"
#include "sdtune/io/safetensors.h"
#include "sdtune/io/state_dict.h"
#include "sdtune/io/tensor.h"

namespace sdtune::lora {
namespace fs = std::filesystem;
namespace {

// diffusers' adapter metadata: {"unet.r": 4, "unet.lora_alpha": 8, "unet.alpha_pattern": {...}}.
double metadata_alpha(const nlohmann::json& md, const std::string& component,
                      const std::string& module, int64_t rank) {
  if (md.is_null()) return static_cast<double>(rank);  // diffusers' default: alpha = r
  const auto pattern = md.find(component + ".alpha_pattern");
  if (pattern != md.end() && pattern->is_object())
    for (const auto& [key, value] : pattern->items())
      if (module == key || module.ends_with("." + key)) return value.get<double>();
  const auto alpha = md.find(component + ".lora_alpha");
  return alpha != md.end() && alpha->is_number() ? alpha->get<double>() : static_cast<double>(rank);
}

// The single-file (SGM) paths of a UNet's modules, by diffusers path. kohya's SDXL files name the
// UNet's layers so ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"): sd-scripts
// trains SDXL on the original model's modules. Empty for a model without down blocks.
std::map<std::string, std::string> single_file_unet_paths(const torch::nn::Module& unet) {
  std::vector<std::string> paths;
  for (const auto& item : unet.named_modules("", /*include_self=*/false))
    paths.push_back(item.key());
  const formats::SingleFileLayout layout = formats::unet_layout_from_modules(paths);
  std::map<std::string, std::string> out;
  if (layout.layers_per_block.empty()) return out;
  const formats::SingleFileKeys keys(layout);
  for (const auto& path : paths)
    if (const auto single = keys.unet_module_to_single(path)) out[path] = *single;
  return out;
}

bool is_sdxl_unet(const torch::nn::Module& unet) {
  for (const auto& item : unet.named_modules("", false))
    if (item.key() == "add_embedding") return true;
  return false;
}

}  // namespace

LoraFile read_lora_file(const fs::path& path) {
  if (!fs::exists(path)) throw Error("LoRA file not found", path.string());
  const io::SafetensorsFile file = io::SafetensorsFile::open(path);
  nlohmann::json md;
  if (auto it = file.metadata().find("lora_adapter_metadata"); it != file.metadata().end()) {
    try {
      md = nlohmann::json::parse(it->second);
    } catch (const nlohmann::json::exception& e) {
      throw Error(std::string("invalid lora_adapter_metadata JSON: ") + e.what(), path.string());
    }
  }
  LoraFile out;
  std::map<std::pair<std::string, std::string>, LoraEntry> layers;
  std::map<std::pair<std::string, std::string>, std::pair<bool, bool>> seen;  // down, up
  std::vector<std::string> unknown;
  bool any_kohya = false, any_diffusers = false;
  for (const auto& view : file.tensors()) {
    const std::optional<formats::LoraKey> key = formats::parse_lora_key(view.name);
    if (!key) {
      unknown.push_back(view.name);
      continue;
    }
    const auto& [format, component, name, part] = *key;
    (format == Format::Kohya ? any_kohya : any_diffusers) = true;
    LoraEntry& e = layers[{component, name}];
    e.component = component;
    e.name = name;
    const at::Tensor t = io::to_tensor(view);
    if (part == "down") {
      e.down = t;
      seen[{component, name}].first = true;
    } else if (part == "up") {
      e.up = t;
      seen[{component, name}].second = true;
    } else {
      e.alpha = t.to(at::kDouble).item<double>();
    }
  }
  if (!unknown.empty() && !layers.empty()) {
    // Never dropped in silence: an adapter kind sdtune does not apply (DoRA's magnitudes, LoHa,
    // LoKr) would otherwise give another image than its tool does.
    std::string list;
    for (size_t i = 0; i < unknown.size() && i < 5; ++i) list += (i ? ", " : "") + unknown[i];
    if (unknown.size() > 5) list += ", ...";
    throw Error(std::to_string(unknown.size()) +
                    " keys are not LoRA weights sdtune applies (DoRA, LoHa and LoKr adapters "
                    "are not read): " +
                    list,
                path.string());
  }
  if (layers.empty())
    throw Error(
        "no LoRA weights (expected kohya lora_unet_*/lora_te_*/lora_te1_*/lora_te2_* or "
        "diffusers unet.*/text_encoder.*/text_encoder_2.* lora keys)",
        path.string());
  if (any_kohya && any_diffusers) throw Error("mixes kohya and diffusers LoRA keys", path.string());
  out.format = any_kohya ? Format::Kohya : Format::Diffusers;
  for (auto& [key, e] : layers) {
    const auto [has_down, has_up] = seen[key];
    if (!has_down || !has_up)
      throw Error(std::string("LoRA layer has no ") + (has_down ? "up" : "down") + " weight",
                  path.string(), e.name);
    if (e.down.dim() < 2 || e.up.dim() < 2 || e.down.size(0) != e.up.size(1))
      throw Error("LoRA down " + io::shape_string(e.down.sizes()) + " and up " +
                      io::shape_string(e.up.sizes()) + " do not share a rank",
                  path.string(), e.name);
    if (e.alpha == 0) {
      e.alpha = out.format == Format::Kohya
                    ? static_cast<double>(e.down.size(0))
                    : metadata_alpha(md, e.component, e.name, e.down.size(0));
    }
    out.entries.push_back(std::move(e));
  }
  return out;
}

std::vector<LoraLayer> resolve(const LoraFile& file,
                               const std::map<std::string, const torch::nn::Module*>& models,
                               const std::string& source) {
  // Every weight-bearing module of each model, by its path and by its kohya name.
  std::map<std::string, std::pair<std::string, at::Tensor>> by_name;  // (component, name) key
  for (const auto& [component, model] : models) {
    std::map<std::string, std::string> single;
    if (component == "unet") single = single_file_unet_paths(*model);
    for (const auto& item : model->named_modules("", /*include_self=*/false)) {
      const auto params = item.value()->named_parameters(/*recurse=*/false);
      const at::Tensor* w = params.find("weight");
      if (w == nullptr || w->dim() < 2) continue;
      const std::string& path = item.key();
      by_name[component + "\n" + path] = {path, *w};
      by_name[component + "\n" + formats::kohya_layer_name(component, path)] = {path, *w};
      // kohya's SDXL files name the UNet's layers by the single file's module paths.
      if (const auto it = single.find(path); it != single.end())
        by_name[component + "\n" + formats::kohya_layer_name(component, it->second)] = {path, *w};
      // SDXL's kohya files name the first text encoder lora_te1_.
      if (component == "text_encoder")
        by_name[component + "\n" + formats::kohya_layer_name(component, path, true)] = {path, *w};
      // diffusers' text-encoder keys may carry transformers 4's "text_model." prefix or not.
      if (component.starts_with("text_encoder") && path.starts_with("text_model."))
        by_name[component + "\n" + path.substr(11)] = {path, *w};
    }
  }
  std::vector<LoraLayer> out;
  std::vector<std::string> unmatched;
  for (const auto& e : file.entries) {
    auto it = by_name.find(e.component + "\n" + e.name);
    if (it == by_name.end()) {
      unmatched.push_back(e.component + ":" + e.name);
      continue;
    }
    const at::Tensor& w = it->second.second;
    // up · down must have W's shape: [out, r]·[r, in] (or the conv's [out, in, kh, kw]).
    const bool fits =
        e.up.size(0) == w.size(0) && e.down.size(1) == w.size(1) &&
        (w.dim() == 2 ||
         (e.down.dim() == 4 && e.down.size(2) == w.size(2) && e.down.size(3) == w.size(3)) ||
         (e.down.dim() == 2 && w.size(2) == 1 && w.size(3) == 1));
    if (!fits) {
      unmatched.push_back(e.component + ":" + e.name + " (up " + io::shape_string(e.up.sizes()) +
                          ", down " + io::shape_string(e.down.sizes()) + " vs weight " +
                          io::shape_string(w.sizes()) + ")");
      continue;
    }
    out.push_back({e.component, it->second.first, e.down, e.up, e.alpha});
  }
  if (!unmatched.empty()) {
    std::string list;
    for (size_t i = 0; i < unmatched.size() && i < 5; ++i) {
      if (i) list += ", ";
      list += unmatched[i];
    }
    if (unmatched.size() > 5) list += ", ...";
    throw Error(std::to_string(unmatched.size()) + " of " + std::to_string(file.entries.size()) +
                    " LoRA layers match no layer of this model (a LoRA for another "
                    "architecture?): " +
                    list,
                source);
  }
  return out;
}

void merge(torch::nn::Module& model, const std::string& component,
           const std::vector<LoraLayer>& layers, double scale) {
  at::NoGradGuard no_grad;
  std::map<std::string, at::Tensor> weights;
  for (const auto& item : model.named_modules("", false)) {
    const auto params = item.value()->named_parameters(false);
    if (const at::Tensor* w = params.find("weight")) weights[item.key()] = *w;
  }
  for (const auto& l : layers) {
    if (l.component != component) continue;
    at::Tensor& w = weights.at(l.module);
    const at::Tensor up = l.up.to(w.device(), at::kFloat).flatten(1);
    const at::Tensor down = l.down.to(w.device(), at::kFloat).flatten(1);
    const at::Tensor delta =
        at::matmul(up, down).reshape(w.sizes()) * (scale * l.alpha / static_cast<double>(l.rank()));
    w.add_(delta.to(w.scalar_type()));
  }
}

void write_lora_file(const fs::path& path, const std::vector<LoraLayer>& layers, Format format,
                     const torch::nn::Module* unet) {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  std::map<std::string, std::string> metadata;
  if (format == Format::Kohya) {
    // SDXL's files name the first text encoder lora_te1_ (beside lora_te2_) and the UNet's layers
    // by their single-file paths, as sd-scripts writes them and A1111 and ComfyUI read them.
    const bool sdxl = (unet && is_sdxl_unet(*unet)) ||
                      std::any_of(layers.begin(), layers.end(), [](const LoraLayer& l) {
                        return l.component == "text_encoder_2";
                      });
    std::map<std::string, std::string> single;
    if (sdxl && unet) single = single_file_unet_paths(*unet);
    for (const auto& l : layers) {
      std::string module = l.module;
      if (l.component == "unet" && sdxl && unet) {
        const auto it = single.find(l.module);
        if (it == single.end())
          throw Error("no single-file name for the UNet layer " + l.module, path.string());
        module = it->second;
      }
      tensors.emplace_back(formats::lora_key(format, l.component, module, "down", sdxl), l.down);
      tensors.emplace_back(formats::lora_key(format, l.component, module, "up", sdxl), l.up);
      tensors.emplace_back(formats::lora_key(format, l.component, module, "alpha", sdxl),
                           at::scalar_tensor(l.alpha, at::kFloat));
    }
  } else {
    nlohmann::json md = nlohmann::json::object();
    for (const std::string component : {"unet", "text_encoder", "text_encoder_2"}) {
      std::set<std::string> targets;
      nlohmann::json ranks = nlohmann::json::object(), alphas = nlohmann::json::object();
      int64_t r = -1;
      double alpha = -1;
      bool uniform = true;
      for (const auto& l : layers) {
        if (l.component != component) continue;
        tensors.emplace_back(formats::lora_key(format, component, l.module, "down"), l.down);
        tensors.emplace_back(formats::lora_key(format, component, l.module, "up"), l.up);
        // PEFT matches target_modules as name suffixes ("to_q", "to_out.0") and pattern keys as
        // path suffixes; without transformers 4's "text_model." they fit transformers 5 too.
        const std::string path =
            l.module.starts_with("text_model.") ? l.module.substr(11) : l.module;
        const size_t last = path.rfind('.');
        std::string target = last == std::string::npos ? path : path.substr(last + 1);
        if (!target.empty() && std::isdigit(static_cast<unsigned char>(target[0])) &&
            last != std::string::npos) {
          const size_t before = path.rfind('.', last - 1);
          target = path.substr(before == std::string::npos ? 0 : before + 1);
        }
        targets.insert(target);
        ranks[path] = l.rank();
        alphas[path] = l.alpha;
        if (r < 0) r = l.rank(), alpha = l.alpha;
        uniform = uniform && r == l.rank() && alpha == l.alpha;
      }
      if (targets.empty()) continue;
      // PEFT's LoraConfig fields, as diffusers writes them with save_lora_weights.
      md[component + ".r"] = r;
      md[component + ".lora_alpha"] = alpha;
      md[component + ".target_modules"] = std::vector<std::string>(targets.begin(), targets.end());
      md[component + ".rank_pattern"] = uniform ? nlohmann::json::object() : ranks;
      md[component + ".alpha_pattern"] = uniform ? nlohmann::json::object() : alphas;
    }
    metadata["format"] = "pt";
    metadata["lora_adapter_metadata"] = md.dump(2);
  }
  io::write_tensors(path, tensors, metadata);
}

std::pair<fs::path, double> parse_lora_argument(const std::string& arg) {
  const size_t colon = arg.rfind(':');
  if (colon != std::string::npos && colon + 1 < arg.size()) {
    const std::string number = arg.substr(colon + 1);
    char* end = nullptr;
    const double scale = std::strtod(number.c_str(), &end);
    if (end && *end == '\0') {
      if (!std::isfinite(scale))
        throw Error("the LoRA scale must be a finite number, got '" + number + "'", arg);
      return {arg.substr(0, colon), scale};
    }
  }
  return {arg, 1.0};
}

void apply_lora_arguments(const std::vector<std::string>& args,
                          const std::map<std::string, torch::nn::Module*>& models) {
  for (const auto& arg : args) {
    const auto [path, scale] = parse_lora_argument(arg);
    LoraFile file = read_lora_file(path);
    std::erase_if(file.entries, [&](const LoraEntry& e) { return !models.count(e.component); });
    std::map<std::string, const torch::nn::Module*> targets(models.begin(), models.end());
    const std::vector<LoraLayer> layers = resolve(file, targets, path.string());
    for (const auto& [component, model] : models) merge(*model, component, layers, scale);
  }
}

}  // namespace sdtune::lora
