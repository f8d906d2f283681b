// sdtune forward: runs one pipeline component on tensors from a safetensors file and writes its
// outputs (float32) to another. The reference point for parity with diffusers / transformers.
#include <map>
#include <string>

#include <c10/core/InferenceMode.h>

#include "cli/commands.h"
#include "sdtune/error.h"
#include "sdtune/io/tensor.h"
#include "sdtune/models/stable_diffusion.h"

namespace sdtune::cli {
namespace {

using Tensors = std::map<std::string, at::Tensor>;

// The named input, checked for rank; errors name the inputs file and the tensor.
at::Tensor input(const Tensors& in, const std::string& file, const std::string& name, int64_t rank) {
  auto it = in.find(name);
  if (it == in.end()) throw Error("missing input tensor", file, name);
  if (it->second.dim() != rank)
    throw Error("expected " + std::to_string(rank) + " dimensions, got " + std::to_string(it->second.dim()),
                file, name);
  return it->second;
}

}  // namespace

void add_forward(CLI::App& app) {
  struct Args {
    std::string model, component, inputs, out, device = "cpu", dtype = "fp32";
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("forward", "Run one component on tensors from a safetensors file");
  cmd->add_option("--model", a->model, "Pipeline folder")->required();
  cmd->add_option("--component", a->component, "text-encoder | vae-encoder | vae-decoder | unet")
      ->required()
      ->check(CLI::IsMember({"text-encoder", "vae-encoder", "vae-decoder", "unet"}));
  cmd->add_option("--inputs", a->inputs, "Input tensors (.safetensors)")->required();
  cmd->add_option("--out", a->out, "Output tensors (.safetensors), float32")->required();
  cmd->add_option("--device", a->device, "cpu or cuda")->capture_default_str()->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--dtype", a->dtype, "fp32, fp16 or bf16")->capture_default_str();
  cmd->callback([a] {
    models::LoadOptions opts;
    opts.device = c10::Device(a->device);
    opts.dtype = models::parse_dtype(a->dtype);
    auto folder = io::ModelFolder::open(a->model);
    Tensors in = io::read_tensors(a->inputs);
    auto to_model = [&](const at::Tensor& t) { return t.to(opts.device, opts.dtype); };
    c10::InferenceMode guard;
    std::vector<std::pair<std::string, at::Tensor>> out;

    if (a->component == "text-encoder") {
      at::Tensor ids = input(in, a->inputs, "input_ids", 2);
      if (ids.scalar_type() != at::kLong) throw Error("expected int64 token ids", a->inputs, "input_ids");
      auto model = models::load_text_encoder(folder, opts);
      auto r = model->forward(ids.to(opts.device));
      out = {{"last_hidden_state", r.last_hidden_state}, {"pooler_output", r.pooler_output}};
    } else if (a->component == "vae-encoder") {
      auto model = models::load_vae(folder, opts);
      auto posterior = model->encode(to_model(input(in, a->inputs, "sample", 4)));
      out = {{"mean", posterior.mean}, {"logvar", posterior.logvar}};
    } else if (a->component == "vae-decoder") {
      auto model = models::load_vae(folder, opts);
      out = {{"sample", model->decode(to_model(input(in, a->inputs, "latents", 4)))}};
    } else {
      at::Tensor sample = input(in, a->inputs, "sample", 4);
      auto tit = in.find("timestep");
      if (tit == in.end()) throw Error("missing input tensor", a->inputs, "timestep");
      at::Tensor timestep = tit->second;
      if (timestep.dim() > 1 || (timestep.dim() == 1 && timestep.size(0) != sample.size(0) && timestep.size(0) != 1))
        throw Error("expected a scalar or [B] timesteps with B = " + std::to_string(sample.size(0)), a->inputs, "timestep");
      at::Tensor context = input(in, a->inputs, "encoder_hidden_states", 3);
      auto model = models::load_unet(folder, opts);
      if (context.size(2) != model->config.cross_attention_dim)
        throw Error("last dimension " + std::to_string(context.size(2)) + " != cross_attention_dim " +
                        std::to_string(model->config.cross_attention_dim),
                    a->inputs, "encoder_hidden_states");
      if (sample.size(1) != model->config.in_channels)
        throw Error("expected " + std::to_string(model->config.in_channels) + " channels, got " +
                        std::to_string(sample.size(1)), a->inputs, "sample");
      at::Tensor t = timestep.is_floating_point() ? timestep.to(at::kFloat) : timestep.to(at::kLong);
      out = {{"sample", model->forward(to_model(sample), t.to(opts.device), to_model(context))}};
    }
    for (auto& [name, t] : out) t = t.to(at::kCPU, at::kFloat);
    io::write_tensors(a->out, out);
  });
}

}  // namespace sdtune::cli
