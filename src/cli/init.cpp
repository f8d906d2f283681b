// sdtune init: a new pipeline with random weights, from a folder of configs — the start of a model
// trained from scratch (the tiny world's base model). The folder is a diffusers pipeline without
// weights: model_index.json, {unet,vae,text_encoder}/config.json, and the tokenizer and scheduler
// files, which are copied as they are.
#include <cstdio>

#include <ATen/Context.h>

#include "cli/commands.h"
#include "sdtune/error.h"
#include "sdtune/io/model_folder.h"
#include "sdtune/io/pipeline_writer.h"
#include "sdtune/io/state_dict.h"
#include "sdtune/models/component_loader.h"
#include "sdtune/text/clip_tokenizer.h"

namespace sdtune::cli {
namespace {

struct InitFlags {
  std::string config, out;
  uint64_t seed = 0;
};

int64_t count(const io::NamedTensors& tensors) {
  int64_t n = 0;
  for (const auto& [name, t] : tensors) n += t.numel();
  return n;
}

void run(const InitFlags& f) {
  const io::ModelFolder configs = io::ModelFolder::open(f.config);
  for (const char* name : {"unet", "vae", "text_encoder", "tokenizer", "scheduler"})
    if (!configs.has_component(name))
      throw Error(std::string("model_index.json names no '") + name + "'",
                  (configs.root() / "model_index.json").string());
  // The tokenizer must load: a pipeline that cannot read prompts is no start.
  text::ClipTokenizer::from_pipeline(configs);
  // LibTorch's default initialization (PyTorch's: Kaiming-uniform for Linear and Conv2d, N(0, 1)
  // for embeddings, identity for norms), drawn from a generator seeded with --seed.
  at::manual_seed(f.seed);
  io::SavedWeights weights;
  models::UNet2DConditionModel unet(
      models::UNet2DConditionConfig::from_json(configs.component_config("unet")));
  models::AutoencoderKL vae(
      models::AutoencoderKLConfig::from_json(configs.component_config("vae")));
  models::CLIPTextModel text_encoder(
      models::CLIPTextConfig::from_json(configs.component_config("text_encoder")));
  weights.unet = io::state_dict_of(*unet);
  weights.vae = io::state_dict_of(*vae);
  weights.text_encoder = io::state_dict_of(*text_encoder);
  io::save_pipeline(configs, f.out, weights);
  std::printf("unet: %lld parameters\nvae: %lld parameters\ntext_encoder: %lld parameters\n",
              static_cast<long long>(count(*weights.unet)),
              static_cast<long long>(count(*weights.vae)),
              static_cast<long long>(count(*weights.text_encoder)));
  std::printf("model: %s\n", f.out.c_str());
}

}  // namespace

void add_init(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "init",
      "Make a pipeline with random weights from a folder of configs (to train from scratch)");
  auto f = std::make_shared<InitFlags>();
  cmd->add_option("--config", f->config,
                  "Pipeline folder without weights: model_index.json, component configs, "
                  "tokenizer and scheduler files")
      ->required();
  cmd->add_option("--out", f->out, "Output pipeline folder")->required();
  cmd->add_option("--seed", f->seed)->capture_default_str();
  cmd->callback([f] { run(*f); });
}

}  // namespace sdtune::cli
