#include "sdtune/formats/single_file_keys.h"

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

}  // namespace

const char* component_name(SingleFileComponent component) {
  switch (component) {
    case C::Unet:
      return "unet";
    case C::Vae:
      return "vae";
    case C::TextEncoder:
      return "text_encoder";
  }
  return "?";
}

SingleFileKeys::SingleFileKeys(const models::UNet2DConditionConfig& unet,
                               const models::VaeOptions& vae) {
  const std::string u = "model.diffusion_model.";
  auto add = [&](C c, std::string d, std::string s, Leaves l = Leaves::Same) {
    prefixes_.push_back({c, std::move(d), std::move(s), l});
  };
  // ---- UNet: CompVis numbers its input and output blocks through all levels ----
  add(C::Unet, "time_embedding.linear_1", u + "time_embed.0");
  add(C::Unet, "time_embedding.linear_2", u + "time_embed.2");
  add(C::Unet, "conv_in", u + "input_blocks.0.0");
  add(C::Unet, "conv_norm_out", u + "out.0");
  add(C::Unet, "conv_out", u + "out.2");
  const int64_t levels = static_cast<int64_t>(unet.block_out_channels.size());
  if (static_cast<int64_t>(unet.layers_per_block.size()) != levels)
    throw Error("single-file keys: layers_per_block must have one entry per block");
  auto has_attention = [](const std::string& type) {
    return type.find("CrossAttn") != std::string::npos;
  };
  int64_t input = 1;  // input_blocks.0 is conv_in
  for (int64_t b = 0; b < levels; ++b) {
    const std::string down = "down_blocks." + str(b);
    for (int64_t j = 0; j < unet.layers_per_block[b]; ++j, ++input) {
      const std::string in = u + "input_blocks." + str(input);
      add(C::Unet, down + ".resnets." + str(j), in + ".0", Leaves::UnetResnet);
      if (has_attention(unet.down_block_types.at(b)))
        add(C::Unet, down + ".attentions." + str(j), in + ".1");
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
    const bool attention = has_attention(unet.up_block_types.at(b));
    const int64_t layers = unet.layers_per_block[levels - 1 - b] + 1;
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
  const int64_t vae_levels = static_cast<int64_t>(vae.block_out_channels.size());
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
    for (int64_t j = 0; j < vae.layers_per_block; ++j)
      add(C::Vae, down + ".resnets." + str(j), ldm + ".block." + str(j), Leaves::VaeResnet);
    if (b + 1 < vae_levels) add(C::Vae, down + ".downsamplers.0.conv", ldm + ".downsample.conv");
    const std::string up = "decoder.up_blocks." + str(b),
                      ldm_up = v + "decoder.up." + str(vae_levels - 1 - b);
    for (int64_t j = 0; j < vae.layers_per_block + 1; ++j)
      add(C::Vae, up + ".resnets." + str(j), ldm_up + ".block." + str(j), Leaves::VaeResnet);
    if (b + 1 < vae_levels) add(C::Vae, up + ".upsamplers.0.conv", ldm_up + ".upsample.conv");
  }
  add(C::Vae, "quant_conv", v + "quant_conv");
  add(C::Vae, "post_quant_conv", v + "post_quant_conv");

  // ---- Text encoder (SD 1.x): transformers' names under a prefix ----
  add(C::TextEncoder, "text_model", "cond_stage_model.transformer.text_model");
}

std::optional<SingleFileKey> SingleFileKeys::to_single(SingleFileComponent component,
                                                       const std::string& key) const {
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

std::optional<SingleFileKey> SingleFileKeys::to_diffusers(const std::string& key) const {
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
