// sdtune inspect DIR|FILE: what a pipeline folder or a single-file checkpoint holds, read from
// configs and safetensors headers alone (no weights are loaded).
#include <algorithm>
#include <cstdio>
#include <map>
#include <string>

#include "cli/commands.h"
#include "sdtune/error.h"
#include "sdtune/formats/single_file_configs.h"
#include "sdtune/formats/single_file_keys.h"
#include "sdtune/io/model_folder.h"
#include "sdtune/io/pickle_checkpoint.h"
#include "sdtune/io/safetensors.h"
#include "sdtune/io/tensor.h"
#include "sdtune/text/clip_tokenizer.h"

namespace sdtune::cli {
namespace {

std::string human_count(int64_t n) {
  char buf[32];
  if (n >= 1'000'000'000)
    std::snprintf(buf, sizeof buf, "%.2fB", n / 1e9);
  else if (n >= 1'000'000)
    std::snprintf(buf, sizeof buf, "%.1fM", n / 1e6);
  else if (n >= 1'000)
    std::snprintf(buf, sizeof buf, "%.1fK", n / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(n));
  return buf;
}

void print_weights(const std::filesystem::path& dir) {
  int64_t params = 0, bytes = 0, tensors = 0;
  std::map<std::string, int64_t> per_dtype;
  auto files = io::find_weight_files(dir);
  for (const auto& f : files) {
    auto file = io::SafetensorsFile::open(f);
    for (const auto& t : file.tensors()) {
      params += t.numel();
      bytes += static_cast<int64_t>(t.nbytes);
      ++tensors;
      per_dtype[std::string(io::dtype_name(t.dtype))] += t.numel();
    }
  }
  std::string dtypes;
  for (const auto& [name, n] : per_dtype)
    dtypes += (dtypes.empty() ? "" : ", ") + name + " " + human_count(n);
  std::printf("    weights: %zu file(s), %lld tensors, %s parameters (%lld), %.1f MB, dtypes: %s\n",
              files.size(), static_cast<long long>(tensors), human_count(params).c_str(),
              static_cast<long long>(params), bytes / 1e6, dtypes.c_str());
}

// One line of the config keys a user most often wants to see for each component.
void print_config(const io::ModelFolder& folder, const io::Component& c) {
  static const std::map<std::string, std::vector<std::string>> keys{
      {"unet",
       {"sample_size", "block_out_channels", "layers_per_block", "attention_head_dim",
        "num_attention_heads", "transformer_layers_per_block", "cross_attention_dim",
        "use_linear_projection", "upcast_attention", "addition_embed_type"}},
      {"vae", {"block_out_channels", "latent_channels", "scaling_factor", "force_upcast"}},
      {"text_encoder",
       {"hidden_size", "num_hidden_layers", "num_attention_heads", "hidden_act",
        "max_position_embeddings"}},
      {"text_encoder_2",
       {"hidden_size", "num_hidden_layers", "num_attention_heads", "hidden_act",
        "max_position_embeddings", "projection_dim"}},
      {"scheduler",
       {"num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "prediction_type",
        "timestep_spacing", "steps_offset"}},
  };
  auto it = keys.find(c.name);
  if (it == keys.end()) return;
  auto config = folder.component_config(c.name);
  std::string line;
  for (const auto& k : it->second)
    if (config.has(k)) line += (line.empty() ? "" : ", ") + k + "=" + config.json().at(k).dump();
  std::printf("    config: %s\n", line.c_str());
}

// The family a folder's configs show: SDXL's text_time conditioning in the UNet, else the text
// encoder's activation (SD 1.x's CLIP ViT-L uses quick_gelu, SD 2.x's OpenCLIP ViT-H gelu).
std::string family(const io::ModelFolder& folder) {
  if (folder.component_config("unet").get_string("addition_embed_type", "") == "text_time")
    return "SDXL";
  const auto& components = folder.components();
  if (std::none_of(components.begin(), components.end(),
                   [](const io::Component& c) { return c.name == "text_encoder"; }))
    return "unknown (no text encoder)";
  const std::string act =
      folder.component_config("text_encoder").get_string("hidden_act", "quick_gelu");
  return act == "quick_gelu" ? "SD 1.x" : act == "gelu" ? "SD 2.x" : "unknown (" + act + ")";
}

// A single-file checkpoint (.safetensors, or a pickle read by io/pickle_checkpoint): its
// components by key prefix, the architecture its text encoder and cross-attention width show, the
// configs sdtune reads it with, and what else it carries.
void inspect_single_file(const std::filesystem::path& path) {
  struct Tensor {
    std::string name;
    io::DType dtype;
    std::vector<int64_t> shape;
    int64_t numel;
  };
  std::vector<Tensor> tensors;
  if (io::pickle_checkpoint_name(path)) {
    for (const auto& [name, t] : io::read_pickle_checkpoint(path).tensors)
      tensors.push_back({name, io::from_scalar_type(t.scalar_type()), t.sizes().vec(), t.numel()});
  } else {
    const io::SafetensorsFile file = io::SafetensorsFile::open(path);
    for (const auto& t : file.tensors()) tensors.push_back({t.name, t.dtype, t.shape, t.numel()});
  }
  struct Count {
    int64_t tensors = 0, params = 0;
    std::map<std::string, int64_t> dtypes;
  };
  std::map<std::string, Count> parts;
  std::vector<std::string> names;
  std::map<std::string, std::vector<int64_t>> shapes;
  int64_t context = 0;
  for (const auto& t : tensors) {
    names.push_back(t.name);
    shapes[t.name] = t.shape;
    const auto c = formats::single_file_component(t.name);
    std::string part = c ? formats::component_name(*c) : "";
    if (!c) part = t.name.starts_with("model_ema.") ? "EMA copy (model_ema.*)" : "other";
    Count& n = parts[part];
    ++n.tensors;
    n.params += t.numel;
    n.dtypes[std::string(io::dtype_name(t.dtype))] += t.numel;
    // The UNet's cross-attention reads the text encoder's width: 768 in SD 1.x, 1024 in SD 2.x,
    // 768 + 1280 in SDXL.
    if (t.name.ends_with(".attn2.to_k.weight") && t.shape.size() == 2) context = t.shape[1];
  }
  const auto text = formats::single_file_text_layout(names);
  const char* kind = !text                                    ? "no text encoder"
                     : *text == formats::TextLayout::OpenClip ? "SD 2.x (OpenCLIP text encoder)"
                     : *text == formats::TextLayout::Sdxl ? "SDXL (CLIP and OpenCLIP text encoders)"
                                                          : "SD 1.x (CLIP text encoder)";
  std::printf("%s\n  single-file checkpoint: %s, cross-attention width %lld\n", path.c_str(), kind,
              static_cast<long long>(context));
  for (const auto& [part, n] : parts) {
    std::string dtypes;
    for (const auto& [name, count] : n.dtypes)
      dtypes += (dtypes.empty() ? "" : ", ") + name + " " + human_count(count);
    std::printf("  %s: %lld tensors, %s parameters (%lld), dtypes: %s\n", part.c_str(),
                static_cast<long long>(n.tensors), human_count(n.params).c_str(),
                static_cast<long long>(n.params), dtypes.c_str());
  }
  // What --model FILE reads it as (formats/single_file_configs.h).
  try {
    const auto c = formats::infer_single_file_configs(shapes, "", path.string());
    std::printf(
        "  read as: %s; unet block_out_channels=%s, layers_per_block=%s, "
        "attention_head_dim=%s, cross_attention_dim=%s; vae block_out_channels=%s; text "
        "encoder %s layers of width %s; prediction_type=%s (--prediction-type to change)\n",
        c.architecture.c_str(), c.unet["block_out_channels"].dump().c_str(),
        c.unet["layers_per_block"].dump().c_str(), c.unet["attention_head_dim"].dump().c_str(),
        c.unet["cross_attention_dim"].dump().c_str(), c.vae["block_out_channels"].dump().c_str(),
        c.text_encoder["num_hidden_layers"].dump().c_str(),
        c.text_encoder["hidden_size"].dump().c_str(),
        c.scheduler["prediction_type"].get<std::string>().c_str());
  } catch (const Error& e) {
    std::printf("  read as: not without --config (%s%s%s)\n", e.message().c_str(),
                e.key().empty() ? "" : ": ", e.key().c_str());
  }
}

}  // namespace

void add_inspect(CLI::App& app) {
  auto dir = std::make_shared<std::string>();
  auto* cmd = app.add_subcommand(
      "inspect",
      "Show a pipeline folder's (or single file's) components, configs, parameter counts and "
      "dtypes");
  cmd->add_option("DIR", *dir, "Pipeline folder (diffusers layout) or single-file checkpoint")
      ->required();
  cmd->callback([dir] {
    if (std::filesystem::is_regular_file(*dir)) return inspect_single_file(*dir);
    auto folder = io::ModelFolder::open(*dir);
    std::printf("%s\n", folder.root().string().c_str());
    std::printf("  pipeline: %s (diffusers %s)\n",
                folder.model_index().get_string("_class_name", "?").c_str(),
                folder.model_index().get_string("_diffusers_version", "?").c_str());
    const auto components = folder.components();
    if (std::any_of(components.begin(), components.end(),
                    [](const io::Component& c) { return c.name == "unet"; }))
      std::printf("  family: %s\n", family(folder).c_str());
    for (const auto& c : folder.components()) {
      std::printf("  %s: %s.%s\n", c.name.c_str(), c.library.c_str(), c.class_name.c_str());
      if (c.name == "tokenizer" || c.name == "tokenizer_2") {
        auto tok = text::ClipTokenizer::load(folder.component_dir(c.name));
        std::printf("    vocab: %zu tokens, max length %lld, pad id %lld\n", tok.vocab_size(),
                    static_cast<long long>(tok.max_length()), static_cast<long long>(tok.pad_id()));
        continue;
      }
      print_config(folder, c);
      if (c.name == "unet" || c.name == "vae" || c.name == "text_encoder" ||
          c.name == "text_encoder_2" || c.name == "safety_checker")
        print_weights(folder.component_dir(c.name));
    }
  });
}

}  // namespace sdtune::cli
