// sdtune forward: runs one pipeline component on tensors from a safetensors file and writes its
// outputs (float32) to another. The reference point for parity with diffusers / transformers.
#include <map>
#include <optional>
#include <string>

#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/InferenceMode.h>

#include "cli/commands.h"
#include "sdtune/caption/blip_captioner.h"
#include "sdtune/caption/blip_decoding.h"
#include "sdtune/error.h"
#include "sdtune/io/tensor.h"
#include "sdtune/lora/lora.h"
#include "sdtune/models/blip.h"
#include "sdtune/models/component_loader.h"
#include "sdtune/models/single_file.h"

namespace sdtune::cli {
namespace {

using Tensors = std::map<std::string, at::Tensor>;
using Outputs = std::vector<std::pair<std::string, at::Tensor>>;

struct Args {
  std::string model, component, inputs, out, device = "cpu", dtype = "fp32";
  bool output_hidden_states = false;
  std::optional<uint64_t> seed;
  std::vector<std::string> loras;  // merged into the component before it runs
};

// The named input, checked for rank; errors name the inputs file and the tensor.
at::Tensor input(const Tensors& in, const std::string& file, const std::string& name,
                 int64_t rank) {
  auto it = in.find(name);
  if (it == in.end()) throw Error("missing input tensor", file, name);
  if (rank >= 0 && it->second.dim() != rank)
    throw Error(
        "expected " + std::to_string(rank) + " dimensions, got " + std::to_string(it->second.dim()),
        file, name);
  return it->second;
}

// Dimension 1 of an [B,C,H,W] input against the channels the model's config asks for.
void check_channels(const at::Tensor& t, int64_t channels, const std::string& file,
                    const std::string& name) {
  if (t.size(1) != channels)
    throw Error(
        "expected " + std::to_string(channels) + " channels, got " + std::to_string(t.size(1)),
        file, name);
}

Outputs text_encoder(const io::ModelFolder& folder, const models::LoadOptions& opts,
                     const Tensors& in, const Args& a) {
  at::Tensor ids = input(in, a.inputs, "input_ids", 2);
  if (ids.scalar_type() != at::kLong)
    throw Error("expected int64 token ids", a.inputs, "input_ids");
  const bool second = a.component == "text-encoder-2";
  auto model = models::load_text_encoder(folder, opts, second ? "text_encoder_2" : "text_encoder");
  lora::apply_lora_arguments(a.loras,
                             {{second ? "text_encoder_2" : "text_encoder", model.ptr().get()}});
  // Checked here so that the error names the inputs file, not just the model's limit.
  if (ids.size(1) > model->config.max_position_embeddings)
    throw Error("has " + std::to_string(ids.size(1)) +
                    " tokens, more than max_position_embeddings " +
                    std::to_string(model->config.max_position_embeddings),
                a.inputs, "input_ids");
  if (ids.numel() > 0) {
    const int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
    if (lo < 0 || hi >= model->config.vocab_size)
      throw Error("token id " + std::to_string(lo < 0 ? lo : hi) + " outside the vocabulary [0, " +
                      std::to_string(model->config.vocab_size) + ")",
                  a.inputs, "input_ids");
  }
  auto r = model->forward(ids.to(opts.device), a.output_hidden_states);
  Outputs out{{"last_hidden_state", r.last_hidden_state}, {"pooler_output", r.pooler_output}};
  if (r.text_embeds.defined()) out.emplace_back("text_embeds", r.text_embeds);
  // hidden_states.0 is the embedding output, hidden_states.i the output of layer i (clip skip k
  // uses hidden_states.{N-k} through the final layer norm).
  for (size_t i = 0; i < r.hidden_states.size(); ++i)
    out.emplace_back("hidden_states." + std::to_string(i), r.hidden_states[i]);
  return out;
}

Outputs vae_encoder(const io::ModelFolder& folder, const models::LoadOptions& opts,
                    const Tensors& in, const Args& a) {
  at::Tensor sample = input(in, a.inputs, "sample", 4);
  auto model = models::load_vae(folder, opts);
  check_channels(sample, model->config.vae.in_channels, a.inputs, "sample");
  auto posterior = model->encode(sample.to(opts.device, opts.dtype));
  Outputs out{{"mean", posterior.mean}, {"logvar", posterior.logvar}};
  // With a seed, one draw from the posterior by a CPU generator, as diffusers'
  // latent_dist.sample(generator=torch.Generator("cpu").manual_seed(seed)) draws it.
  if (a.seed)
    out.emplace_back("latents",
                     posterior.sample(at::make_generator<at::CPUGeneratorImpl>(*a.seed)));
  return out;
}

Outputs vae_decoder(const io::ModelFolder& folder, const models::LoadOptions& opts,
                    const Tensors& in, const Args& a) {
  at::Tensor latents = input(in, a.inputs, "latents", 4);
  auto model = models::load_vae(folder, opts);
  check_channels(latents, model->config.vae.latent_channels, a.inputs, "latents");
  return {{"sample", model->decode(latents.to(opts.device, opts.dtype))}};
}

Outputs unet(const io::ModelFolder& folder, const models::LoadOptions& opts, const Tensors& in,
             const Args& a) {
  at::Tensor sample = input(in, a.inputs, "sample", 4);
  at::Tensor timestep = input(in, a.inputs, "timestep", -1);
  if (timestep.dim() > 1 ||
      (timestep.dim() == 1 && timestep.size(0) != sample.size(0) && timestep.size(0) != 1))
    throw Error("expected a scalar or [B] timesteps with B = " + std::to_string(sample.size(0)),
                a.inputs, "timestep");
  at::Tensor context = input(in, a.inputs, "encoder_hidden_states", 3);
  auto model = models::load_unet(folder, opts);
  lora::apply_lora_arguments(a.loras, {{"unet", model.ptr().get()}});
  if (context.size(2) != model->config.cross_attention_dim)
    throw Error("last dimension " + std::to_string(context.size(2)) + " != cross_attention_dim " +
                    std::to_string(model->config.cross_attention_dim),
                a.inputs, "encoder_hidden_states");
  if (context.size(0) != sample.size(0))
    throw Error("batch size " + std::to_string(context.size(0)) + " != batch size " +
                    std::to_string(sample.size(0)) + " of 'sample'",
                a.inputs, "encoder_hidden_states");
  check_channels(sample, model->config.in_channels, a.inputs, "sample");
  at::Tensor t = timestep.is_floating_point() ? timestep.to(at::kFloat) : timestep.to(at::kLong);
  // SDXL's added conditions, given when the inputs hold them (the model says if it needs them).
  std::optional<models::AddedConditions> added;
  if (in.count("text_embeds") || in.count("time_ids"))
    added =
        models::AddedConditions{input(in, a.inputs, "text_embeds", 2).to(opts.device, opts.dtype),
                                input(in, a.inputs, "time_ids", 2).to(opts.device, at::kFloat)};
  return {
      {"sample", model->forward(sample.to(opts.device, opts.dtype), t.to(opts.device),
                                context.to(opts.device, opts.dtype), added ? &*added : nullptr)}};
}

// BLIP captioning (a transformers model folder, not a pipeline): "blip-vision" gives the image
// embeddings of pixel_values; "blip-text" the decoder's logits for input_ids over image_embeds;
// "blip-generate" caption ids for pixel_values and the prompt's input_ids (scalars max_length,
// min_length, num_beams, length_penalty and early_stopping optional); "blip-pixels" the image
// processor's pixel_values of a uint8 [H,W,3] image.
Outputs blip(const Tensors& in, const Args& a) {
  if (a.component == "blip-pixels") {
    const at::Tensor image = input(in, a.inputs, "image", 3);
    if (image.scalar_type() != at::kByte || image.size(2) != 3)
      throw Error("expected uint8 [H,W,3]", a.inputs, "image");
    return {{"pixel_values", caption::BlipImageProcessor::load(a.model)({image})}};
  }
  auto model = models::load_blip(a.model);
  if (a.component == "blip-vision")
    return {{"image_embeds", model->encode_image(input(in, a.inputs, "pixel_values", 4))}};
  at::Tensor ids = input(in, a.inputs, "input_ids", 2);
  if (ids.scalar_type() != at::kLong)
    throw Error("expected int64 token ids", a.inputs, "input_ids");
  if (ids.numel() > 0 &&
      (ids.min().item<int64_t>() < 0 || ids.max().item<int64_t>() >= model->config.vocab_size))
    throw Error("token id outside the vocabulary", a.inputs, "input_ids");
  if (a.component == "blip-text")
    return {{"logits", model->decode(ids, input(in, a.inputs, "image_embeds", 3))}};
  caption::BlipDecoding d;
  if (in.count("max_length")) d.max_length = in.at("max_length").item<int64_t>();
  if (in.count("min_length")) d.min_length = in.at("min_length").item<int64_t>();
  if (in.count("num_beams")) d.num_beams = in.at("num_beams").item<int64_t>();
  if (in.count("length_penalty")) d.length_penalty = in.at("length_penalty").item<double>();
  if (in.count("early_stopping")) d.early_stopping = in.at("early_stopping").item<bool>();
  return {
      {"sequences", caption::blip_generate(model, input(in, a.inputs, "pixel_values", 4), ids, d)}};
}

}  // namespace

void add_forward(CLI::App& app) {
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("forward", "Run one component on tensors from a safetensors file");
  cmd->add_option("--model", a->model, "Pipeline folder or single file")->required();
  cmd->add_option("--component", a->component,
                  "text-encoder | text-encoder-2 | vae-encoder | vae-decoder | unet | "
                  "blip-vision | blip-text | blip-generate | blip-pixels")
      ->required()
      ->check(CLI::IsMember({"text-encoder", "text-encoder-2", "vae-encoder", "vae-decoder", "unet",
                             "blip-vision", "blip-text", "blip-generate", "blip-pixels"}));
  cmd->add_option("--inputs", a->inputs, "Input tensors (.safetensors)")->required();
  cmd->add_option("--out", a->out, "Output tensors (.safetensors), float32")->required();
  cmd->add_option("--device", a->device, "cpu or cuda")
      ->capture_default_str()
      ->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--dtype", a->dtype, "fp32, fp16 or bf16")->capture_default_str();
  cmd->add_option("--lora", a->loras,
                  "LoRA file merged into the unet or text encoder, FILE[:SCALE]")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  cmd->add_flag(
      "--output-hidden-states", a->output_hidden_states,
      "text-encoder: also write hidden_states.0 (embeddings) .. hidden_states.N (each layer)");
  cmd->add_option("--seed", a->seed,
                  "vae-encoder: also write latents, one draw from the posterior");
  cmd->callback([a] {
    models::LoadOptions opts;
    opts.device = c10::Device(a->device);
    opts.dtype = models::parse_dtype(a->dtype);
    Tensors in = io::read_tensors(a->inputs);
    c10::InferenceMode guard;
    if (a->component.starts_with("blip")) {
      Outputs out = blip(in, *a);
      for (auto& [name, t] : out) t = t.is_floating_point() ? t.to(at::kFloat) : t;
      io::write_tensors(a->out, out);
      return;
    }
    auto folder = models::open_model(a->model);
    Outputs out = a->component.starts_with("text-encoder") ? text_encoder(folder, opts, in, *a)
                  : a->component == "vae-encoder"          ? vae_encoder(folder, opts, in, *a)
                  : a->component == "vae-decoder"          ? vae_decoder(folder, opts, in, *a)
                                                           : unet(folder, opts, in, *a);
    for (auto& [name, t] : out) t = t.to(at::kCPU, at::kFloat);
    io::write_tensors(a->out, out);
  });
}

}  // namespace sdtune::cli
