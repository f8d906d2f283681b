#include "sdtune/formats/single_file_keys.h"

#include <algorithm>
#include <cctype>
#include <utility>

#include "sdtune/error.h"

namespace sdtune::formats {
namespace {

using C = SingleFileComponent;

// Leaf renames inside a module, diffusers first. A resnet of the UNet is CompVis's ResBlock
// (in_layers = [norm, SiLU, conv], emb_layers = [SiLU, linear], out_layers = [norm, SiLU,
// dropout, conv]); the VAE's keeps its names but for the shortcut; the VAE's attention names its
// projections by letter.
const std::vector<std::pair<std::string, std::string>> kUnetResnet = {
    {"norm1", "in_layers.0"},  {"conv1", "in_layers.2"},  {"time_emb_proj", "emb_layers.1"},
    {"norm2", "out_layers.0"}, {"conv2", "out_layers.3"}, {"conv_shortcut", "skip_connection"}};
const std::vector<std::pair<std::string, std::string>> kVaeResnet = {
    {"conv_shortcut", "nin_shortcut"}};
const std::vector<std::pair<std::string, std::string>> kVaeAttention = {
    {"group_norm", "norm"}, {"to_q", "q"}, {"to_k", "k"}, {"to_v", "v"}, {"to_out.0", "proj_out"}};

// `rest` (what follows the module prefix, e.g. "conv1.weight") with its leading module name
// renamed by `table`, in the direction from -> to (first = diffusers). nullopt when no entry
// matches and the table renames everything (the VAE attention has no other leaves).
std::optional<std::string> rename_leaf(
    const std::string& rest, const std::vector<std::pair<std::string, std::string>>& table,
    bool to_single) {
  for (const auto& [d, s] : table) {
    const std::string& from = to_single ? d : s;
    const std::string& to = to_single ? s : d;
    if (rest.size() > from.size() && rest.compare(0, from.size(), from) == 0 &&
        rest[from.size()] == '.')
      return to + rest.substr(from.size());
  }
  return std::nullopt;
}

bool starts_module(const std::string& key, const std::string& prefix) {
  return key.size() > prefix.size() && key.compare(0, prefix.size(), prefix) == 0 &&
         key[prefix.size()] == '.';
}

std::string str(int64_t i) {
  return std::to_string(i);
}

const std::string kOpenClip = "cond_stage_model.model.";           // SD 2.x
const std::string kOpenClipXl = "conditioner.embedders.1.model.";  // SDXL's second encoder
const std::string kClip = "cond_stage_model.transformer.";
const std::string kClipXl = "conditioner.embedders.0.transformer.";
const std::string kLayers = "text_model.encoder.layers.";
const std::string kResblocks = "transformer.resblocks.";
const std::string kProjection = "text_projection.weight";  // CLIPTextModelWithProjection's

// OpenCLIP's names outside the layers, and inside a layer (after "resblocks.I."), diffusers first.
const std::vector<std::pair<std::string, std::string>> kOpenClipOuter = {
    {"text_model.embeddings.token_embedding.weight", "token_embedding.weight"},
    {"text_model.embeddings.position_embedding.weight", "positional_embedding"},
    {"text_model.final_layer_norm.weight", "ln_final.weight"},
    {"text_model.final_layer_norm.bias", "ln_final.bias"}};
const std::vector<std::pair<std::string, std::string>> kOpenClipLayer = {
    {"layer_norm1", "ln_1"},
    {"layer_norm2", "ln_2"},
    {"mlp.fc1", "mlp.c_fc"},
    {"mlp.fc2", "mlp.c_proj"},
    {"self_attn.out_proj", "attn.out_proj"}};

// "12.rest" -> {12, "rest"}; nullopt when `s` does not start with a number and a dot.
std::optional<std::pair<int64_t, std::string>> split_index(const std::string& s) {
  size_t i = 0;
  while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
  if (i == 0 || i >= s.size() || s[i] != '.' || i > 6) return std::nullopt;
  return std::make_pair(std::stoll(s.substr(0, i)), s.substr(i + 1));
}

// An OpenCLIP text tower under `prefix`: SD 2.x's (cond_stage_model.model.) or SDXL's second
// encoder (conditioner.embedders.1.model., with its projection).
struct OpenClip {
  C component;
  std::string prefix;
  bool projection;  // text_projection <-> text_projection.weight, transposed
  int64_t layers;   // the diffusers model's; a file's layers beyond these are skipped

  std::optional<SingleFileKey> to_single(const std::string& key) const {
    for (const auto& [d, s] : kOpenClipOuter)
      if (key == d) return SingleFileKey{component, key, prefix + s};
    if (projection && key == kProjection)
      return SingleFileKey{.component = component,
                           .diffusers = key,
                           .single = prefix + "text_projection",
                           .transposed = true};
    if (key.rfind(kLayers, 0) != 0) return std::nullopt;
    const auto layer = split_index(key.substr(kLayers.size()));
    if (!layer) return std::nullopt;
    const auto& [i, rest] = *layer;
    const std::string block = prefix + kResblocks + str(i) + ".";
    static const char* const kParts[] = {"q", "k", "v"};
    for (int part = 0; part < 3; ++part)
      for (const char* leaf : {"weight", "bias"})
        if (rest == std::string("self_attn.") + kParts[part] + "_proj." + leaf)
          return SingleFileKey{component, key, block + "attn.in_proj_" + leaf, false, true, part};
    if (const auto renamed = rename_leaf(rest, kOpenClipLayer, true))
      return SingleFileKey{component, key, block + *renamed};
    return std::nullopt;
  }

  std::optional<SingleFileKey> to_diffusers(const std::string& key) const {
    if (key.rfind(prefix, 0) != 0) return std::nullopt;
    const std::string name = key.substr(prefix.size());
    for (const auto& [d, s] : kOpenClipOuter)
      if (name == s) return SingleFileKey{component, d, key};
    if (projection && name == "text_projection")
      return SingleFileKey{
          .component = component, .diffusers = kProjection, .single = key, .transposed = true};
    if (name.rfind(kResblocks, 0) != 0) return std::nullopt;  // text_projection, logit_scale
    const auto layer = split_index(name.substr(kResblocks.size()));
    // SD 2.x conditions on the penultimate layer: diffusers' text encoder stops before the last.
    if (!layer || layer->first >= layers) return std::nullopt;
    const auto& [i, rest] = *layer;
    const std::string block = kLayers + str(i) + ".";
    for (const char* leaf : {"weight", "bias"})
      if (rest == std::string("attn.in_proj_") + leaf)
        return SingleFileKey{component, block + "self_attn.q_proj." + leaf, key, false, true};
    if (const auto renamed = rename_leaf(rest, kOpenClipLayer, false))
      return SingleFileKey{component, block + *renamed, key};
    return std::nullopt;
  }
};

// The layout's OpenCLIP tower: SD 2.x's only text encoder, or SDXL's second.
std::optional<OpenClip> open_clip(TextLayout text, int64_t layers) {
  if (text == TextLayout::OpenClip) return OpenClip{C::TextEncoder, kOpenClip, false, layers};
  if (text == TextLayout::Sdxl) return OpenClip{C::TextEncoder2, kOpenClipXl, true, layers};
  return std::nullopt;
}

}  // namespace

std::vector<std::string> qkv_names(const std::string& q_name) {
  const size_t at = q_name.rfind("q_proj");
  if (at == std::string::npos) throw Error("not a q projection: " + q_name);
  std::vector<std::string> out;
  for (const char* p : {"q_proj", "k_proj", "v_proj"})
    out.push_back(q_name.substr(0, at) + p + q_name.substr(at + 6));
  return out;
}

std::optional<SingleFileComponent> single_file_component(const std::string& key) {
  if (key.starts_with("model.diffusion_model.")) return C::Unet;
  if (key.starts_with("first_stage_model.")) return C::Vae;
  if (key.starts_with("cond_stage_model.") || key.starts_with("conditioner.embedders.0."))
    return C::TextEncoder;
  if (key.starts_with("conditioner.embedders.1.")) return C::TextEncoder2;
  return std::nullopt;
}

std::optional<TextLayout> single_file_text_layout(const std::vector<std::string>& keys) {
  for (const auto& k : keys) {
    if (k.starts_with(kOpenClip)) return TextLayout::OpenClip;
    if (k.starts_with(kClip)) return TextLayout::Clip;
    if (k.starts_with("conditioner.embedders.")) return TextLayout::Sdxl;  // (or its refiner)
  }
  return std::nullopt;
}

const char* component_name(SingleFileComponent component) {
  switch (component) {
    case C::Unet:
      return "unet";
    case C::Vae:
      return "vae";
    case C::TextEncoder:
      return "text_encoder";
    case C::TextEncoder2:
      return "text_encoder_2";
  }
  return "?";
}

SingleFileLayout SingleFileLayout::from_configs(const io::JsonConfig& unet,
                                                const io::JsonConfig& vae,
                                                const io::JsonConfig& text_encoder,
                                                const io::JsonConfig* text_encoder_2) {
  SingleFileLayout l;
  const std::vector<std::string> down = unet.get_string_list("down_block_types");
  const std::vector<std::string> up = unet.get_string_list("up_block_types");
  if (down.size() != up.size()) throw Error("down and up block counts differ", unet.source());
  l.layers_per_block = unet.get_int_or_list("layers_per_block", down.size(), 2);
  for (const auto& t : down) l.down_attention.push_back(t.find("CrossAttn") != std::string::npos);
  for (const auto& t : up) l.up_attention.push_back(t.find("CrossAttn") != std::string::npos);
  l.vae_levels = static_cast<int64_t>(vae.get_int_list("block_out_channels").size());
  l.vae_layers_per_block = vae.get_int("layers_per_block", 2);
  l.addition_embedding = unet.get_string("addition_embed_type", "") == "text_time";
  if (l.addition_embedding != (text_encoder_2 != nullptr))
    throw Error(l.addition_embedding ? "an SDXL UNet (text_time) without a second text encoder"
                                     : "a second text encoder beside a UNet without text_time "
                                       "conditioning (not SDXL)",
                unet.source());
  if (text_encoder_2) {
    l.text = TextLayout::Sdxl;
    l.text_layers = text_encoder_2->get_int("num_hidden_layers");
    return l;
  }
  l.text = text_encoder.get_string("hidden_act", "quick_gelu") == "gelu" ? TextLayout::OpenClip
                                                                         : TextLayout::Clip;
  l.text_layers = text_encoder.get_int("num_hidden_layers");
  return l;
}

SingleFileLayout unet_layout_from_modules(const std::vector<std::string>& module_paths) {
  SingleFileLayout l;
  auto grow = [](auto& v, size_t n) {
    if (v.size() < n) v.resize(n);
  };
  for (const std::string& path : module_paths) {
    if (path.starts_with("add_embedding.")) l.addition_embedding = true;
    for (const bool down : {true, false}) {
      const std::string head = down ? "down_blocks." : "up_blocks.";
      if (!path.starts_with(head)) continue;
      const auto block = split_index(path.substr(head.size()));
      if (!block) continue;
      const auto b = static_cast<size_t>(block->first);
      const std::string& rest = block->second;
      grow(down ? l.down_attention : l.up_attention, b + 1);
      if (rest.starts_with("attentions.")) (down ? l.down_attention : l.up_attention)[b] = true;
      if (down && rest.starts_with("resnets.")) {
        grow(l.layers_per_block, b + 1);
        if (const auto j = split_index(rest.substr(8)))
          l.layers_per_block[b] = std::max(l.layers_per_block[b], j->first + 1);
      }
    }
  }
  // std::vector<bool> resizes separately from the counts: all three have the levels' length.
  const size_t levels = l.layers_per_block.size();
  l.down_attention.resize(levels);
  l.up_attention.resize(levels);
  return l;
}

SingleFileKeys::SingleFileKeys(const SingleFileLayout& layout)
    : text_(layout.text), text_layers_(layout.text_layers) {
  const std::string u = "model.diffusion_model.";
  auto add = [&](C c, std::string d, std::string s, Leaves l = Leaves::Same) {
    prefixes_.push_back({c, std::move(d), std::move(s), l});
  };
  // ---- UNet: CompVis numbers its input and output blocks through all levels ----
  add(C::Unet, "time_embedding.linear_1", u + "time_embed.0");
  add(C::Unet, "time_embedding.linear_2", u + "time_embed.2");
  if (layout.addition_embedding) {
    add(C::Unet, "add_embedding.linear_1", u + "label_emb.0.0");
    add(C::Unet, "add_embedding.linear_2", u + "label_emb.0.2");
  }
  add(C::Unet, "conv_in", u + "input_blocks.0.0");
  add(C::Unet, "conv_norm_out", u + "out.0");
  add(C::Unet, "conv_out", u + "out.2");
  const int64_t levels = static_cast<int64_t>(layout.layers_per_block.size());
  int64_t input = 1;  // input_blocks.0 is conv_in
  for (int64_t b = 0; b < levels; ++b) {
    const std::string down = "down_blocks." + str(b);
    for (int64_t j = 0; j < layout.layers_per_block[b]; ++j, ++input) {
      const std::string in = u + "input_blocks." + str(input);
      add(C::Unet, down + ".resnets." + str(j), in + ".0", Leaves::UnetResnet);
      if (layout.down_attention[b]) add(C::Unet, down + ".attentions." + str(j), in + ".1");
    }
    if (b + 1 < levels)
      add(C::Unet, down + ".downsamplers.0.conv", u + "input_blocks." + str(input++) + ".0.op");
  }
  add(C::Unet, "mid_block.resnets.0", u + "middle_block.0", Leaves::UnetResnet);
  add(C::Unet, "mid_block.attentions.0", u + "middle_block.1");
  add(C::Unet, "mid_block.resnets.1", u + "middle_block.2", Leaves::UnetResnet);
  int64_t output = 0;
  for (int64_t b = 0; b < levels; ++b) {
    const std::string up = "up_blocks." + str(b);
    const bool attention = layout.up_attention[b];
    const int64_t layers = layout.layers_per_block[levels - 1 - b] + 1;
    for (int64_t j = 0; j < layers; ++j, ++output) {
      const std::string out = u + "output_blocks." + str(output);
      add(C::Unet, up + ".resnets." + str(j), out + ".0", Leaves::UnetResnet);
      if (attention) add(C::Unet, up + ".attentions." + str(j), out + ".1");
      // The upsampler follows the level's last layer, after its attention when it has one.
      if (b + 1 < levels && j + 1 == layers)
        add(C::Unet, up + ".upsamplers.0.conv", out + (attention ? ".2" : ".1") + ".conv");
    }
  }

  // ---- VAE: diffusers reverses the decoder's levels ----
  const std::string v = "first_stage_model.";
  const int64_t vae_levels = layout.vae_levels;
  for (const char* part : {"encoder", "decoder"}) {
    const std::string p = part;
    add(C::Vae, p + ".conv_in", v + p + ".conv_in");
    add(C::Vae, p + ".conv_out", v + p + ".conv_out");
    add(C::Vae, p + ".conv_norm_out", v + p + ".norm_out");
    add(C::Vae, p + ".mid_block.resnets.0", v + p + ".mid.block_1", Leaves::VaeResnet);
    add(C::Vae, p + ".mid_block.resnets.1", v + p + ".mid.block_2", Leaves::VaeResnet);
    add(C::Vae, p + ".mid_block.attentions.0", v + p + ".mid.attn_1", Leaves::VaeAttention);
  }
  for (int64_t b = 0; b < vae_levels; ++b) {
    const std::string down = "encoder.down_blocks." + str(b), ldm = v + "encoder.down." + str(b);
    for (int64_t j = 0; j < layout.vae_layers_per_block; ++j)
      add(C::Vae, down + ".resnets." + str(j), ldm + ".block." + str(j), Leaves::VaeResnet);
    if (b + 1 < vae_levels) add(C::Vae, down + ".downsamplers.0.conv", ldm + ".downsample.conv");
    const std::string up = "decoder.up_blocks." + str(b),
                      ldm_up = v + "decoder.up." + str(vae_levels - 1 - b);
    for (int64_t j = 0; j < layout.vae_layers_per_block + 1; ++j)
      add(C::Vae, up + ".resnets." + str(j), ldm_up + ".block." + str(j), Leaves::VaeResnet);
    if (b + 1 < vae_levels) add(C::Vae, up + ".upsamplers.0.conv", ldm_up + ".upsample.conv");
  }
  add(C::Vae, "quant_conv", v + "quant_conv");
  add(C::Vae, "post_quant_conv", v + "post_quant_conv");

  // ---- Text encoders: CLIP keeps transformers' names under a prefix; OpenCLIP's are mapped by
  // OpenClip.
  if (layout.text == TextLayout::Clip) add(C::TextEncoder, "text_model", kClip + "text_model");
  if (layout.text == TextLayout::Sdxl) add(C::TextEncoder, "text_model", kClipXl + "text_model");
}

std::optional<SingleFileKey> SingleFileKeys::to_single(SingleFileComponent component,
                                                       const std::string& key) const {
  if (const auto tower = open_clip(text_, text_layers_); tower && component == tower->component)
    return tower->to_single(key);
  const Prefix* best = nullptr;
  for (const Prefix& p : prefixes_)
    if (p.component == component && starts_module(key, p.diffusers) &&
        (!best || p.diffusers.size() > best->diffusers.size()))
      best = &p;
  if (!best) return std::nullopt;
  std::string rest = key.substr(best->diffusers.size() + 1);
  bool conv1x1 = false;
  if (best->leaves == Leaves::UnetResnet)
    rest = rename_leaf(rest, kUnetResnet, true).value_or(rest);
  else if (best->leaves == Leaves::VaeResnet)
    rest = rename_leaf(rest, kVaeResnet, true).value_or(rest);
  else if (best->leaves == Leaves::VaeAttention) {
    const auto renamed = rename_leaf(rest, kVaeAttention, true);
    if (!renamed) return std::nullopt;
    conv1x1 = rest.rfind("group_norm.", 0) != 0 && rest.size() > 7 &&
              rest.compare(rest.size() - 7, 7, ".weight") == 0;
    rest = *renamed;
  }
  return SingleFileKey{component, key, best->single + "." + rest, conv1x1};
}

std::optional<std::string> SingleFileKeys::unet_module_to_single(const std::string& path) const {
  static const std::string unet = "model.diffusion_model.", leaf = ".weight";
  const auto k = to_single(C::Unet, path + leaf);
  if (!k || !k->single.starts_with(unet)) return std::nullopt;
  return k->single.substr(unet.size(), k->single.size() - unet.size() - leaf.size());
}

std::optional<SingleFileKey> SingleFileKeys::to_diffusers(const std::string& key) const {
  if (const auto tower = open_clip(text_, text_layers_); tower && key.rfind(tower->prefix, 0) == 0)
    return tower->to_diffusers(key);
  const Prefix* best = nullptr;
  for (const Prefix& p : prefixes_)
    if (starts_module(key, p.single) && (!best || p.single.size() > best->single.size())) best = &p;
  if (!best) return std::nullopt;
  std::string rest = key.substr(best->single.size() + 1);
  bool conv1x1 = false;
  if (best->leaves == Leaves::UnetResnet)
    rest = rename_leaf(rest, kUnetResnet, false).value_or(rest);
  else if (best->leaves == Leaves::VaeResnet)
    rest = rename_leaf(rest, kVaeResnet, false).value_or(rest);
  else if (best->leaves == Leaves::VaeAttention) {
    const auto renamed = rename_leaf(rest, kVaeAttention, false);
    if (!renamed) return std::nullopt;
    conv1x1 = rest.rfind("norm.", 0) != 0 && rest.size() > 7 &&
              rest.compare(rest.size() - 7, 7, ".weight") == 0;
    rest = *renamed;
  }
  return SingleFileKey{best->component, best->diffusers + "." + rest, key, conv1x1};
}

}  // namespace sdtune::formats
