#include "sdtune/train/train_state.h"

#include <functional>

#include "sdtune/error.h"
#include "sdtune/formats/clip_text_keys.h"
#include "sdtune/train/checkpoint.h"

namespace sdtune::train {
namespace fs = std::filesystem;
namespace {

// One file of training_state/: whether this run's checkpoints hold it, how it is saved, and how
// it is restored from what the checkpoint has (nullptr when the checkpoint lacks the file).
struct Part {
  std::string name;
  bool saved;
  std::function<io::StateDict()> save;
  std::function<void(const io::StateDict*)> load;
};

io::StateDict to_state_dict(const io::NamedTensors& named) {
  io::StateDict out;
  for (const auto& [k, v] : named) out[k] = v.detach();
  return out;
}

// The table of parts, for saving and restoring alike.
std::vector<Part> parts(const TrainState& s, const fs::path& dir) {
  const auto file = [dir](const std::string& name) {
    return (dir / "training_state" / (name + ".safetensors")).string();
  };
  const auto lacks = [dir](const std::string& name) {
    return Error("checkpoint lacks training_state/" + name + ".safetensors", dir.string());
  };
  // A part that only fits a run with the same options: a mismatch says so.
  const auto same_options = [dir, lacks](const std::string& name,
                                         std::function<void(const io::StateDict&)> load) {
    return [dir, lacks, name, load](const io::StateDict* d) {
      try {
        if (!d) throw lacks(name);
        load(*d);
      } catch (const Error& e) {
        throw Error(e.message() + " (was the run resumed with different options?)", dir.string());
      }
    };
  };
  const auto generator = [lacks](const std::string& name, at::Generator gen,
                                 const std::string& what) {
    return [lacks, name, gen, what](const io::StateDict* d) mutable {
      if (!d) throw lacks(name);
      auto it = d->find("state");
      if (it == d->end()) throw Error("checkpoint has no '" + what + "' generator state");
      gen.set_state(it->second);
    };
  };
  const auto generator_state = [](at::Generator gen) {
    return [gen]() mutable { return io::StateDict{{"state", gen.get_state()}}; };
  };
  return {
      // Trained weights the pipeline folder does not hold: a LoRA run's adapters, and the raw
      // UNet when the pipeline holds its EMA. Without that file the pipeline's UNet (fp32) is it.
      {"lora", s.adapters != nullptr, [&s] { return lora::adapters_state_dict(*s.adapters); },
       [&s, file, lacks](const io::StateDict* d) {
         if (!s.adapters) return;
         if (!d) throw lacks("lora");
         lora::load_adapters_state_dict(*s.adapters, *d, file("lora"));
       }},
      {"unet", s.ema != nullptr, [&s] { return to_state_dict(module_weights(*s.unet.ptr())); },
       [&s, file, dir, lacks](const io::StateDict* d) {
         if (d)
           io::load_into(*s.unet.ptr(), *d, file("unet"));
         else if (s.ema)  // the pipeline's unet/ holds the EMA weights, not the trained ones
           throw lacks("unet");
         else if (!s.adapters)
           io::load_files_into(*s.unet.ptr(), {dir / "unet/diffusion_pytorch_model.safetensors"},
                               (dir / "unet").string());
       }},
      {"optimizer", true, [&s] { return s.optimizer->state_dict(); },
       same_options("optimizer",
                    [&s](const io::StateDict& d) { s.optimizer->load_state_dict(d); })},
      {"ema", s.ema != nullptr, [&s] { return s.ema->state_dict(); },
       [&s, same_options](const io::StateDict* d) {
         if (s.ema)
           same_options("ema", [&s](const io::StateDict& e) { s.ema->load_state_dict(e); })(d);
       }},
      {"scaler", true, [&s] { return s.scaler->state_dict(); },
       same_options("scaler", [&s](const io::StateDict& d) { s.scaler->load_state_dict(d); })},
      {"sampler", true, [&s] { return s.sampler->state_dict(); },
       same_options("sampler", [&s](const io::StateDict& d) { s.sampler->load_state_dict(d); })},
      {"rng_data", true, generator_state(s.data_gen), generator("rng_data", s.data_gen, "data")},
      {"rng_noise", true, generator_state(s.noise_gen),
       generator("rng_noise", s.noise_gen, "noise")},
  };
}

}  // namespace

io::NamedTensors module_weights(const torch::nn::Module& m, const std::vector<at::Tensor>* params) {
  io::NamedTensors out;
  size_t i = 0;
  for (const auto& p : m.named_parameters())
    out.emplace_back(p.key(), params ? (*params)[i++] : p.value());
  for (const auto& b : m.named_buffers()) out.emplace_back(b.key(), b.value());
  return out;
}

std::map<std::string, io::StateDict> TrainState::save() const {
  std::map<std::string, io::StateDict> out;
  for (const Part& p : parts(*this, {}))
    if (p.saved) out[p.name] = p.save();
  return out;
}

nlohmann::json TrainState::trainer_state(int64_t max_steps, int64_t epoch, int64_t examples) const {
  return {{"step", counters.step},
          {"lr_step", counters.lr_step},
          {"nonfinite_run", counters.nonfinite_run},
          {"max_steps", max_steps},
          {"epoch", epoch},
          {"examples", examples},
          {"lora", adapters != nullptr},
          {"format", "sdtune-checkpoint-1"}};
}

void TrainState::restore(const fs::path& dir) {
  const LoadedCheckpoint ckpt = read_checkpoint(dir);
  const bool lora_on = adapters != nullptr;
  if (lora_on != ckpt.trainer_state.value("lora", false))
    throw Error(lora_on ? "not a LoRA checkpoint: resume it without --lora-rank"
                        : "a LoRA checkpoint: resume it with the run's --lora-rank",
                dir.string());
  // A text encoder trained in full is in the pipeline folder (fp32).
  if (full_text_encoder) {
    io::load_files_into(*text_encoder, {dir / "text_encoder/model.safetensors"},
                        (dir / "text_encoder").string(), formats::clip_text_ignored_keys());
    if (text_encoder_2)
      io::load_files_into(*text_encoder_2, {dir / "text_encoder_2/model.safetensors"},
                          (dir / "text_encoder_2").string(), formats::clip_text_ignored_keys());
  }
  for (const Part& p : parts(*this, dir)) {
    auto it = ckpt.state.find(p.name);
    p.load(it == ckpt.state.end() ? nullptr : &it->second);
  }
  const auto& ts = ckpt.trainer_state;
  counters.step = ts.value("step", int64_t{0});
  counters.lr_step = ts.value("lr_step", counters.step);
  counters.nonfinite_run = ts.value("nonfinite_run", int64_t{0});
}

}  // namespace sdtune::train
