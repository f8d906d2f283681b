#pragma once
// The models a server keeps in memory: each --model loaded once as a pipeline, the --lora files
// read once and matched to each model at start, and the generation of one A1111 request (its
// sampler, LoRAs, seeds and images, answered with A1111's images/parameters/info).
//
// LoRAs are merged into the weights, as `sdtune generate --lora` merges them, so that a request
// gives generate's image. The weights a merge changes are copied first and put back before a
// request with other LoRAs (or none) merges its own, so that merges never pile up rounding.
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "sdtune/lora/lora.h"
#include "sdtune/models/component_loader.h"
#include "sdtune/models/single_file.h"
#include "sdtune/pipeline/stable_diffusion_pipeline.h"
#include "sdtune/serve/generation_queue.h"
#include "sdtune/serve/generation_request.h"

namespace sdtune::serve {

class ResidentModels {
 public:
  // `model_paths`: folders or single files; `lora_args`: FILE[:SCALE], SCALE the one the web page
  // starts from. Errors name the model or file that cannot be loaded.
  ResidentModels(const std::vector<std::string>& model_paths,
                 const std::vector<std::string>& lora_args, const models::LoadOptions& load,
                 const models::SingleFileOptions& file_options,
                 const std::function<void(const std::string&)>& say);
  ~ResidentModels();

  // A1111's /sdapi/v1/sd-models and /sdapi/v1/loras lists (names only: no paths).
  nlohmann::json sd_models() const;
  nlohmann::json loras() const;
  std::string current_title() const;
  // Makes a model (by title or name) the one requests without override_settings use; a
  // RequestError (422) for an unknown one.
  void select(const std::string& name);

  // A RequestError (422) naming the request's unknown model, unknown LoRA or LoRA that does not
  // fit its model: checked before the request waits in the queue.
  void check(const GenerationRequest& request) const;

  // Runs on the queue's worker: the request's images, one per seed (seed, seed + 1, ...), each as
  // `sdtune generate --seed` makes it, reporting progress to `job`. Written into `outputs` too
  // when it is not empty. Interrupted, it answers with the images done so far.
  nlohmann::json generate(Job& job, const std::filesystem::path& outputs);

 private:
  struct Served;
  struct ServedLora {
    std::string name;
    double scale = 1.0;  // --lora FILE:SCALE
    lora::LoraFile file;
  };
  size_t find(const std::string& name) const;             // RequestError 422 when unknown
  size_t chosen(const GenerationRequest& request) const;  // its model, or the current one
  void merge_loras(Served& m, const std::vector<std::pair<std::string, double>>& loras);

  std::vector<std::unique_ptr<Served>> models_;
  std::vector<ServedLora> loras_;
  mutable std::mutex mutex_;  // current_
  size_t current_ = 0;
  int64_t written_ = 0;  // images written to the outputs folder
};

}  // namespace sdtune::serve
