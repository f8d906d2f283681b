// sdtune lora merge | convert: LoRA files outside training. `merge` bakes one or more LoRAs into a
// full pipeline (what A1111 calls "merge"; diffusers' fuse_lora + save_pretrained); `convert`
// rewrites a LoRA between diffusers' and kohya's layouts.
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "sdtune/error.h"
#include "sdtune/io/model_folder.h"
#include "sdtune/io/pipeline_writer.h"
#include "sdtune/io/state_dict.h"
#include "sdtune/lora/lora.h"
#include "sdtune/models/component_loader.h"
#include "sdtune/models/single_file.h"

namespace sdtune::cli {
namespace {

struct MergeArgs {
  std::string model, out, dtype = "fp32";
  std::vector<std::string> loras;
};

void merge(const MergeArgs& a) {
  const io::ModelFolder base = models::open_model(a.model);
  // Merged in float32 whatever the file's dtype, then saved in --dtype.
  const models::LoadOptions fp32{c10::Device("cpu"), at::kFloat, ""};
  models::UNet2DConditionModel unet = models::load_unet(base, fp32);
  models::CLIPTextModel text_encoder = models::load_text_encoder(base, fp32);
  models::CLIPTextModel text_encoder_2{nullptr};
  std::map<std::string, torch::nn::Module*> targets{{"unet", unet.ptr().get()},
                                                    {"text_encoder", text_encoder.ptr().get()}};
  if (unet->config.text_time_embedding) {  // SDXL
    text_encoder_2 = models::load_text_encoder(base, fp32, "text_encoder_2");
    targets["text_encoder_2"] = text_encoder_2.ptr().get();
  }
  lora::apply_lora_arguments(a.loras, targets);
  io::SavedWeights w;
  w.unet = io::state_dict_of(*unet);
  w.text_encoder = io::state_dict_of(*text_encoder);
  if (text_encoder_2) w.text_encoder_2 = io::state_dict_of(*text_encoder_2);
  w.save_dtype = a.dtype == "fp16"   ? at::kHalf
                 : a.dtype == "bf16" ? at::kBFloat16
                 : a.dtype == "fp32" ? at::kFloat
                                     : throw Error("--dtype must be fp32, fp16 or bf16");
  io::save_pipeline(base, a.out, w);
  std::printf("merged %zu LoRA file(s) into %s\n", a.loras.size(), a.out.c_str());
}

struct ConvertArgs {
  std::string model, lora, out, format;
};

void convert(const ConvertArgs& a) {
  const lora::Format format = a.format == "kohya"       ? lora::Format::Kohya
                              : a.format == "diffusers" ? lora::Format::Diffusers
                                                        : throw Error(
                                                              "--format must be kohya or "
                                                              "diffusers");
  // The model supplies module paths: kohya names replace every '.' by '_', which only the
  // model's own module names can undo. Only shapes are needed, but the weights come along.
  const io::ModelFolder base = models::open_model(a.model);
  const models::LoadOptions fp32{c10::Device("cpu"), at::kFloat, ""};
  models::UNet2DConditionModel unet = models::load_unet(base, fp32);
  models::CLIPTextModel text_encoder = models::load_text_encoder(base, fp32);
  models::CLIPTextModel text_encoder_2{nullptr};
  std::map<std::string, const torch::nn::Module*> targets{
      {"unet", unet.ptr().get()}, {"text_encoder", text_encoder.ptr().get()}};
  if (unet->config.text_time_embedding) {  // SDXL
    text_encoder_2 = models::load_text_encoder(base, fp32, "text_encoder_2");
    targets["text_encoder_2"] = text_encoder_2.ptr().get();
  }
  const lora::LoraFile file = lora::read_lora_file(a.lora);
  const auto layers = lora::resolve(file, targets, a.lora);
  lora::write_lora_file(a.out, layers, format, unet.ptr().get());
  std::printf("%zu layers written to %s (%s)\n", layers.size(), a.out.c_str(), a.format.c_str());
}

}  // namespace

void add_lora(CLI::App& app) {
  auto* cmd = app.add_subcommand("lora", "LoRA files: merge into a model, convert between formats");
  cmd->require_subcommand(1);

  auto* m = cmd->add_subcommand("merge", "Bake LoRA files into a full pipeline folder");
  auto ma = std::make_shared<MergeArgs>();
  m->add_option("--model", ma->model, "Base pipeline folder or single file")->required();
  m->add_option("--lora", ma->loras, "LoRA file, FILE[:SCALE]; repeatable")->required();
  m->add_option("--out", ma->out, "Output pipeline folder")->required();
  m->add_option("--dtype", ma->dtype, "Saved weights: fp32, fp16 or bf16")->capture_default_str();
  m->callback([ma] { merge(*ma); });

  auto* c = cmd->add_subcommand("convert", "Rewrite a LoRA file in kohya or diffusers layout");
  auto ca = std::make_shared<ConvertArgs>();
  c->add_option("--model", ca->model, "The pipeline (folder or single file) the LoRA belongs to")
      ->required();
  c->add_option("--lora", ca->lora, "Input LoRA file")->required();
  c->add_option("--out", ca->out, "Output .safetensors")->required();
  c->add_option("--format", ca->format, "kohya or diffusers")->required();
  c->callback([ca] { convert(*ca); });
}

}  // namespace sdtune::cli
