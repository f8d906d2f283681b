#include "sdtune/serve/resident_models.h"

#include <chrono>
#include <ctime>
#include <random>

#include "sdtune/error.h"
#include "sdtune/io/content_hash.h"
#include "sdtune/io/image.h"
#include "sdtune/pipeline/generation_parameters.h"

namespace sdtune::serve {
namespace fs = std::filesystem;
using json = nlohmann::json;

struct ResidentModels::Served {
  std::string name, hash, path;
  std::unique_ptr<pipeline::StableDiffusionPipeline> pipe;
  // Each LoRA's layers matched to this model's modules, by LoRA name; the error for a LoRA that
  // does not fit.
  std::map<std::string, std::vector<lora::LoraLayer>> layers;
  std::map<std::string, std::string> misfits;
  // The weights merges changed, as loaded ("component\nmodule"), and what is merged now.
  std::map<std::string, at::Tensor> originals;
  std::vector<std::pair<std::string, double>> merged;

  std::string title() const { return name + " [" + hash + "]"; }
};

namespace {

at::Tensor& weight_of(torch::nn::Module& model, const std::string& module, const std::string& at) {
  for (const auto& item : model.named_modules("", false))
    if (item.key() == module)
      if (at::Tensor* w = item.value()->named_parameters(false).find("weight")) return *w;
  throw Error("no weight for the LoRA layer " + module, at);
}

std::string timestamp() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%d%H%M%S", &tm);
  return buf;
}

}  // namespace

ResidentModels::ResidentModels(const std::vector<std::string>& model_paths,
                               const std::vector<std::string>& lora_args,
                               const models::LoadOptions& load,
                               const models::SingleFileOptions& file_options,
                               const std::function<void(const std::string&)>& say) {
  if (model_paths.empty()) throw Error("serve needs at least one --model");
  for (const auto& arg : lora_args) {
    const auto [path, scale] = lora::parse_lora_argument(arg);
    ServedLora l{path.stem().string(), scale, lora::read_lora_file(path)};
    for (const auto& other : loras_)
      if (other.name == l.name) throw Error("two --lora files are named " + l.name, path.string());
    loras_.push_back(std::move(l));
  }
  for (const auto& path : model_paths) {
    auto m = std::make_unique<Served>();
    const fs::path p(path);
    m->path = path;
    m->name = (fs::is_regular_file(p) ? p.stem() : p.lexically_normal().filename()).string();
    if (m->name.empty()) m->name = fs::absolute(p).parent_path().filename().string();
    for (const auto& other : models_)
      if (other->name == m->name) throw Error("two --model paths are named " + m->name, path);
    say("loading " + path);
    const io::ModelFolder folder = models::open_model(p, file_options);
    // A1111 shows a short hash of the weights; here the UNet's, by content.
    m->hash = io::ContentHash().component(folder, "unet", "").hex().substr(0, 10);
    m->pipe = std::make_unique<pipeline::StableDiffusionPipeline>(folder, load);
    std::map<std::string, const torch::nn::Module*> targets;
    {
      pipeline::StableDiffusionPipeline& pipe = *m->pipe;
      targets = {{"unet", pipe.unet().ptr().get()},
                 {"text_encoder", pipe.text_encoder().ptr().get()}};
      if (pipe.is_xl()) targets["text_encoder_2"] = pipe.text_encoder_2().ptr().get();
    }
    for (const auto& l : loras_) {
      lora::LoraFile file = l.file;
      std::erase_if(file.entries,
                    [&](const lora::LoraEntry& e) { return !targets.count(e.component); });
      try {
        m->layers[l.name] = lora::resolve(file, targets, l.name);
      } catch (const Error& e) {
        m->misfits[l.name] = e.message();
      }
    }
    models_.push_back(std::move(m));
  }
}

ResidentModels::~ResidentModels() = default;

json ResidentModels::sd_models() const {
  json out = json::array();
  for (const auto& m : models_)
    out.push_back({{"title", m->title()},
                   {"model_name", m->name},
                   {"hash", m->hash.substr(0, 8)},
                   {"sha256", nullptr},
                   {"filename", m->name},
                   {"config", nullptr}});
  return out;
}

json ResidentModels::loras() const {
  json out = json::array();
  for (const auto& l : loras_)
    out.push_back({{"name", l.name}, {"alias", l.name}, {"metadata", {{"sdtune_scale", l.scale}}}});
  return out;
}

std::string ResidentModels::current_title() const {
  std::lock_guard lock(mutex_);
  return models_[current_]->title();
}

size_t ResidentModels::find(const std::string& name) const {
  for (size_t i = 0; i < models_.size(); ++i)
    if (models_[i]->title() == name || models_[i]->name == name || models_[i]->hash == name)
      return i;
  std::string names;
  for (const auto& m : models_) names += (names.empty() ? "" : ", ") + m->title();
  throw RequestError(422, "unknown model '" + name + "' (" + names + ")");
}

void ResidentModels::select(const std::string& name) {
  const size_t i = find(name);
  std::lock_guard lock(mutex_);
  current_ = i;
}

size_t ResidentModels::chosen(const GenerationRequest& r) const {
  if (!r.model.empty()) return find(r.model);
  std::lock_guard lock(mutex_);
  return current_;
}

void ResidentModels::check(const GenerationRequest& r) const {
  const Served& m = *models_[chosen(r)];
  try {  // a sampler this model's scheduler config cannot make (cheap: no model runs)
    schedulers::make_scheduler(r.scheduler.scheduler, m.pipe->scheduler_config(),
                               r.scheduler.karras);
  } catch (const Error& e) {
    throw RequestError(422, "sampler_name: " + r.sampler + " on " + m.title() + ": " + e.message());
  }
  for (const auto& [name, scale] : r.loras) {
    if (m.misfits.count(name))
      throw RequestError(422, "the LoRA '" + name + "' does not fit the model " + m.title() + ": " +
                                  m.misfits.at(name));
    if (!m.layers.count(name)) {
      std::string names;
      for (const auto& l : loras_) names += (names.empty() ? "" : ", ") + l.name;
      throw RequestError(422, "unknown LoRA '" + name +
                                  "' (this server has: " + (names.empty() ? "none" : names) + ")");
    }
  }
}

void ResidentModels::merge_loras(Served& m,
                                 const std::vector<std::pair<std::string, double>>& loras) {
  if (loras == m.merged) return;
  auto& pipe = *m.pipe;
  std::map<std::string, torch::nn::Module*> models{
      {"unet", pipe.unet().ptr().get()}, {"text_encoder", pipe.text_encoder().ptr().get()}};
  if (pipe.is_xl()) models["text_encoder_2"] = pipe.text_encoder_2().ptr().get();
  at::NoGradGuard no_grad;
  // Back to the weights as loaded, then each LoRA merged in order, as generate --lora does.
  for (auto& [key, original] : m.originals) {
    const size_t nl = key.find('\n');
    weight_of(*models.at(key.substr(0, nl)), key.substr(nl + 1), m.name).copy_(original);
  }
  m.merged.clear();
  for (const auto& [name, scale] : loras) {
    const auto& layers = m.layers.at(name);
    for (const auto& l : layers) {
      const std::string key = l.component + "\n" + l.module;
      if (!m.originals.count(key))
        m.originals[key] = weight_of(*models.at(l.component), l.module, m.name).clone();
    }
    for (const auto& [component, model] : models) lora::merge(*model, component, layers, scale);
    m.merged.emplace_back(name, scale);
  }
}

json ResidentModels::generate(Job& job, const fs::path& outputs) {
  const GenerationRequest& r = job.request;
  check(r);
  Served& m = *models_[chosen(r)];
  auto& pipe = *m.pipe;
  merge_loras(m, r.loras);
  pipe.set_scheduler(r.scheduler.scheduler, r.scheduler.karras);
  const int64_t seed = r.seed >= 0 ? r.seed : static_cast<int64_t>(std::random_device{}());
  const int64_t n = r.images();
  job.start(n, pipe.is_xl());

  // Infotexts keep the prompt as sent (its LoRA tags included), as A1111's do.
  const std::string prompt = r.echo.value("prompt", std::string()),
                    negative = r.echo.value("negative_prompt", std::string());
  json images = json::array(), seeds = json::array(), infotexts = json::array();
  bool interrupted = false;
  for (int64_t k = 0; k < n; ++k) {
    pipeline::GenerateOptions g;
    g.prompt = r.prompt;
    g.negative_prompt = r.negative_prompt;
    g.steps = r.steps;
    g.guidance_scale = r.cfg_scale;
    g.width = r.width;
    g.height = r.height;
    g.seed = static_cast<uint64_t>(seed + k);
    g.clip_skip = r.clip_skip;
    g.eta = r.eta;
    g.init_image = r.init_image;
    g.strength = r.denoising_strength;
    at::Tensor image;
    try {
      int64_t step = 0, steps = 0;
      image = pipe.generate(
          g, pipe.encode_prompt(g),
          [&](int64_t i, int64_t total) {
            step = i + 1;
            steps = total;
          },
          [&](const at::Tensor& latents) {
            job.step(k, step, steps, latents);
            job.check();
          })[0];
    } catch (const JobStopped&) {
      if (job.cancelled || !job.interrupted) throw;
      interrupted = true;
      break;
    }
    pipeline::GenerationSettings s{.steps = r.steps,
                                   .sampler = pipe.sampler_label(),
                                   .cfg_scale = r.cfg_scale,
                                   .seed = g.seed,
                                   .width = r.width,
                                   .height = r.height,
                                   .model = m.name,
                                   .clip_skip = r.clip_skip};
    if (r.img2img) s.denoising_strength = r.denoising_strength;
    const std::string infotext = pipeline::parameters_text(prompt, negative, s);
    const std::string png = io::encode_png(image, {{"parameters", infotext}});
    if (!outputs.empty()) {
      // Names of sdtune's choosing: time, a counter and the seed.
      const fs::path file = outputs / (timestamp() + "-" + std::to_string(written_++) + "-" +
                                       std::to_string(g.seed) + ".png");
      io::write_png(file, image, {{"parameters", infotext}});
    }
    images.push_back(io::base64_encode(png));
    seeds.push_back(g.seed);
    infotexts.push_back(infotext);
  }
  json prompts = json::array(), negatives = json::array();
  for (size_t i = 0; i < seeds.size(); ++i) {
    prompts.push_back(prompt);
    negatives.push_back(negative);
  }
  const json info = {{"prompt", prompt},
                     {"all_prompts", prompts},
                     {"negative_prompt", negative},
                     {"all_negative_prompts", negatives},
                     {"seed", seed},
                     {"all_seeds", seeds},
                     {"subseed", seed},
                     {"all_subseeds", seeds},
                     {"subseed_strength", 0},
                     {"width", r.width},
                     {"height", r.height},
                     {"sampler_name", pipe.sampler_label()},
                     {"cfg_scale", r.cfg_scale},
                     {"steps", r.steps},
                     {"batch_size", r.batch_size},
                     {"restore_faces", false},
                     {"sd_model_name", m.name},
                     {"sd_model_hash", m.hash},
                     {"seed_resize_from_w", -1},
                     {"seed_resize_from_h", -1},
                     {"denoising_strength", r.img2img ? json(r.denoising_strength) : json(nullptr)},
                     {"extra_generation_params", json::object()},
                     {"index_of_first_image", 0},
                     {"infotexts", infotexts},
                     {"styles", json::array()},
                     {"job_timestamp", timestamp()},
                     {"clip_skip", r.clip_skip + 1},
                     {"is_using_inpainting_conditioning", false},
                     {"interrupted", interrupted},
                     {"version", "sdtune"}};
  return {{"images", images}, {"parameters", r.echo}, {"info", info.dump()}};
}

}  // namespace sdtune::serve
