#pragma once
// The noise schedulers of diffusers, with one interface: set_timesteps, scale_model_input, step,
// add_noise. A scheduler is built from scheduler/scheduler_config.json; every random draw comes
// from the caller's generator, in the order and shapes diffusers draws it, so that a seed gives
// the same trajectory as diffusers.
#include <limits>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/core/Generator.h>

#include "sdtune/io/json_config.h"

namespace sdtune::schedulers {

enum class PredictionType { Epsilon, VPrediction, Sample };
// "epsilon" | "v_prediction" | "sample" (the config's and the training scripts' spelling); an
// Error naming the valid values otherwise.
PredictionType parse_prediction_type(const std::string& name);
enum class TimestepSpacing { Leading, Trailing, Linspace };

struct SchedulerConfig {
  std::string class_name;  // "_class_name" of the config ("PNDMScheduler", ...)
  int64_t num_train_timesteps = 1000;
  std::string beta_schedule = "linear";  // linear | scaled_linear | squaredcos_cap_v2
  double beta_start = 0.0001;
  double beta_end = 0.02;
  PredictionType prediction_type = PredictionType::Epsilon;
  TimestepSpacing timestep_spacing = TimestepSpacing::Leading;
  int64_t steps_offset = 0;
  bool set_alpha_to_one = true;
  bool clip_sample = true;
  double clip_sample_range = 1.0;
  bool rescale_betas_zero_snr = false;
  bool skip_prk_steps = false;                 // PNDM: PLMS only (SD's default)
  bool use_karras_sigmas = false;              // Euler, DPM-Solver++
  std::string variance_type;                   // DDPM: "fixed_small" (default), "fixed_large", ...
  std::string timestep_type = "discrete";      // Euler
  std::string interpolation_type = "linear";   // Euler
  std::string algorithm_type = "dpmsolver++";  // DPM-Solver
  int64_t solver_order = 2;                    // DPM-Solver
  bool lower_order_final = true;               // DPM-Solver
  std::string solver_type = "midpoint";        // DPM-Solver: midpoint only
  bool euler_at_final = false;                 // DPM-Solver
  double lambda_min_clipped = -std::numeric_limits<double>::infinity();  // DPM-Solver
  std::string final_sigmas_type = "zero";      // Euler, DPM-Solver: zero | sigma_min
  std::optional<double> sigma_min, sigma_max;  // Euler: the Karras range (default: the schedule's)
  // Alternative sigma spacings of diffusers that sdtune does not implement (an Error if set).
  bool use_exponential_sigmas = false, use_beta_sigmas = false, use_lu_lambdas = false,
       use_flow_sigmas = false;
  bool thresholding = false;
  // The keys the JSON gave (non-null). A field whose key is absent holds the default above, and
  // make_scheduler replaces it by the chosen class's own default where diffusers' differ:
  // timestep_spacing is linspace for Euler and DPM-Solver, set_alpha_to_one false for PNDM. A
  // config built in code that sets those two fields must add their keys here.
  std::set<std::string> given;

  // Reads a scheduler_config.json; keys absent take diffusers' defaults for the scheduler that
  // make_scheduler builds (see `given`), as diffusers' from_config does when it loads one
  // class's config into another. Unknown enum values are an Error naming the file and key.
  static SchedulerConfig from_json(const io::JsonConfig& json);
};

// β_t, α_t = 1 − β_t and ᾱ_t = Π α (float32 [num_train_timesteps]), computed as diffusers does.
struct NoiseSchedule {
  at::Tensor betas, alphas, alphas_cumprod;
};
NoiseSchedule make_noise_schedule(const SchedulerConfig& config);

// ᾱ_t per sample, shaped [B,1,…,1] to broadcast over `like`, in like's dtype and device.
at::Tensor alphas_cumprod_at(const NoiseSchedule& schedule, const at::Tensor& timesteps,
                             const at::Tensor& like);

// The forward process q(x_t | x₀): x_t = √ᾱ_t · x₀ + √(1 − ᾱ_t) · ε per sample, with ᾱ in x₀'s
// dtype (DDPMScheduler.add_noise). The one implementation, for training and img2img alike.
at::Tensor add_noise(const NoiseSchedule& schedule, const at::Tensor& original,
                     const at::Tensor& noise, const at::Tensor& timesteps);

class Scheduler {
 public:
  virtual ~Scheduler() = default;

  // Chooses the inference timesteps (and sigmas) for `num_inference_steps` and resets the
  // per-run state (step index, multistep history).
  virtual void set_timesteps(int64_t num_inference_steps) = 0;
  // The timesteps the denoising loop visits, in order; int64 for the DDPM family, float32 for
  // the sigma-based schedulers, as diffusers gives them to the UNet.
  const at::Tensor& timesteps() const { return timesteps_; }
  // Model evaluations per timestep entry (PNDM's PRK steps would be > 1; all ours are 1).
  virtual int64_t order() const { return 1; }
  // σ_max-style scale of the initial noise (1 for the DDPM family).
  virtual double init_noise_sigma() const { return 1.0; }
  // Input the UNet sees at timestep t (the sigma schedulers divide by sqrt(σ²+1)).
  virtual at::Tensor scale_model_input(const at::Tensor& sample, const at::Tensor& timestep) {
    return sample;
  }
  // One denoising step from `sample` at `timestep` given the model's output; returns the
  // previous (less noisy) sample. Random draws (DDPM variance, DDIM with eta > 0, ancestral
  // noise, ...) come from `generator`, on the generator's device.
  virtual at::Tensor step(const at::Tensor& model_output, const at::Tensor& timestep,
                          const at::Tensor& sample, std::optional<at::Generator> generator) = 0;
  // Forward diffusion: x_t for clean `original` and `noise` at integer `timesteps` [B].
  virtual at::Tensor add_noise(const at::Tensor& original, const at::Tensor& noise,
                               const at::Tensor& timesteps) const;
  // img2img: the loop starts at timesteps()[begin_index] (diffusers' set_begin_index).
  virtual void set_begin_index(int64_t begin_index) { begin_index_ = begin_index; }

  const SchedulerConfig& config() const { return config_; }
  const NoiseSchedule& schedule() const { return schedule_; }

  // η of DDIM (Song et al. 2021), diffusers' step(eta=...): 0 is DDIM proper, 1 has DDPM's
  // variance; with eta > 0 every step draws noise from the generator. An option of every
  // scheduler, as the pipeline passes it; only DDIM's step uses it (diffusers passes eta only
  // to a step that takes it).
  void set_eta(double eta) { eta_ = eta; }
  double eta() const { return eta_; }

 protected:
  explicit Scheduler(SchedulerConfig config);

  SchedulerConfig config_;
  NoiseSchedule schedule_;
  at::Tensor timesteps_;
  int64_t num_inference_steps_ = 0;
  std::optional<int64_t> begin_index_;
  double eta_ = 0.0;
};

// Names accepted by --scheduler: ddpm, ddim, pndm, euler, euler-ancestral, dpmpp-2m.
const std::vector<std::string>& scheduler_names();
// `name` when given (an Error when unknown), else the --scheduler name of the config's own class
// (an Error when sdtune does not implement it).
std::string resolve_scheduler_name(const std::string& name, const SchedulerConfig& config);
// The scheduler `name` with `config`; "" means the config's own class. `karras` turns on
// use_karras_sigmas. An Error for an unknown name or class.
std::unique_ptr<Scheduler> make_scheduler(const std::string& name, SchedulerConfig config,
                                          bool karras = false);
// The scheduler `name` (a --scheduler name) as A1111-style tools label it ("PLMS", "Euler a",
// "DPM++ 2M Karras", ...), for the "parameters" text of generated images.
std::string sampler_label(const std::string& name, const SchedulerConfig& config);

}  // namespace sdtune::schedulers
