#include "sdtune/schedulers/scheduler.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "schedulers/registry.h"
#include "sdtune/error.h"

namespace sdtune::schedulers {
namespace {

// ᾱ(t) = cos²((t + 0.008)/1.008 · π/2) (Nichol & Dhariwal's cosine schedule); β_i = 1 −
// ᾱ(t_{i+1})/ᾱ(t_i), capped at 0.999, computed in double and stored as float32 like diffusers'
// betas_for_alpha_bar.
at::Tensor cosine_betas(int64_t n) {
  auto alpha_bar = [](double t) { return std::pow(std::cos((t + 0.008) / 1.008 * M_PI / 2), 2); };
  std::vector<float> betas(n);
  for (int64_t i = 0; i < n; ++i) {
    const double t1 = static_cast<double>(i) / n, t2 = static_cast<double>(i + 1) / n;
    betas[i] = static_cast<float>(std::min(1 - alpha_bar(t2) / alpha_bar(t1), 0.999));
  }
  return at::tensor(betas, at::kFloat);
}

// Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed": shift and
// scale √ᾱ so that the last timestep has zero SNR (pure noise), keeping the first unchanged.
at::Tensor rescale_zero_terminal_snr(const at::Tensor& betas) {
  at::Tensor alphas_bar_sqrt = at::cumprod(1.0 - betas, 0).sqrt();
  at::Tensor first = alphas_bar_sqrt[0].clone(), last = alphas_bar_sqrt[-1].clone();
  // The factor first / (first − last) is formed first, as diffusers does (bitwise parity).
  alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last));
  at::Tensor alphas_bar = alphas_bar_sqrt.pow(2);
  at::Tensor alphas =
      at::cat({alphas_bar.slice(0, 0, 1), alphas_bar.slice(0, 1) / alphas_bar.slice(0, 0, -1)});
  return 1.0 - alphas;
}

PredictionType parse_prediction(const io::JsonConfig& j) {
  try {
    return parse_prediction_type(j.get_string("prediction_type", "epsilon"));
  } catch (const Error& e) {
    throw Error(e.message(), j.source(), "prediction_type");
  }
}

TimestepSpacing parse_spacing(const io::JsonConfig& j) {
  const std::string v = j.get_string("timestep_spacing", "leading");
  if (v == "leading") return TimestepSpacing::Leading;
  if (v == "trailing") return TimestepSpacing::Trailing;
  if (v == "linspace") return TimestepSpacing::Linspace;
  throw Error("unknown timestep_spacing '" + v + "' (expected leading, trailing or linspace)",
              j.source(), "timestep_spacing");
}

}  // namespace

SchedulerConfig SchedulerConfig::from_json(const io::JsonConfig& j) {
  SchedulerConfig c;
  c.class_name = j.get_string("_class_name", "");
  c.num_train_timesteps = j.get_int("num_train_timesteps", c.num_train_timesteps);
  c.beta_schedule = j.get_string("beta_schedule", c.beta_schedule);
  if (c.beta_schedule != "linear" && c.beta_schedule != "scaled_linear" &&
      c.beta_schedule != "squaredcos_cap_v2")
    throw Error("unknown beta_schedule '" + c.beta_schedule +
                    "' (expected linear, scaled_linear or squaredcos_cap_v2)",
                j.source(), "beta_schedule");
  if (j.has("trained_betas"))
    throw Error("trained_betas are not supported", j.source(), "trained_betas");
  c.beta_start = j.get_double("beta_start", c.beta_start);
  c.beta_end = j.get_double("beta_end", c.beta_end);
  c.prediction_type = parse_prediction(j);
  c.timestep_spacing = parse_spacing(j);
  c.steps_offset = j.get_int("steps_offset", c.steps_offset);
  c.set_alpha_to_one = j.get_bool("set_alpha_to_one", c.set_alpha_to_one);
  c.clip_sample = j.get_bool("clip_sample", c.clip_sample);
  c.clip_sample_range = j.get_double("clip_sample_range", c.clip_sample_range);
  c.rescale_betas_zero_snr = j.get_bool("rescale_betas_zero_snr", c.rescale_betas_zero_snr);
  c.skip_prk_steps = j.get_bool("skip_prk_steps", c.skip_prk_steps);
  c.use_karras_sigmas = j.get_bool("use_karras_sigmas", c.use_karras_sigmas);
  c.variance_type = j.get_string("variance_type", c.variance_type);
  c.timestep_type = j.get_string("timestep_type", c.timestep_type);
  c.interpolation_type = j.get_string("interpolation_type", c.interpolation_type);
  c.algorithm_type = j.get_string("algorithm_type", c.algorithm_type);
  c.solver_order = j.get_int("solver_order", c.solver_order);
  c.lower_order_final = j.get_bool("lower_order_final", c.lower_order_final);
  c.thresholding = j.get_bool("thresholding", c.thresholding);
  if (c.thresholding)
    throw Error("dynamic thresholding is not supported", j.source(), "thresholding");
  c.solver_type = j.get_string("solver_type", c.solver_type);
  c.euler_at_final = j.get_bool("euler_at_final", c.euler_at_final);
  c.lambda_min_clipped = j.get_double("lambda_min_clipped", c.lambda_min_clipped);
  c.final_sigmas_type = j.get_string("final_sigmas_type", c.final_sigmas_type);
  if (j.has("sigma_min")) c.sigma_min = j.get_double("sigma_min");
  if (j.has("sigma_max")) c.sigma_max = j.get_double("sigma_max");
  c.use_exponential_sigmas = j.get_bool("use_exponential_sigmas", c.use_exponential_sigmas);
  c.use_beta_sigmas = j.get_bool("use_beta_sigmas", c.use_beta_sigmas);
  c.use_lu_lambdas = j.get_bool("use_lu_lambdas", c.use_lu_lambdas);
  c.use_flow_sigmas = j.get_bool("use_flow_sigmas", c.use_flow_sigmas);
  for (const auto& item : j.json().items())
    if (!item.value().is_null()) c.given.insert(item.key());
  return c;
}

NoiseSchedule make_noise_schedule(const SchedulerConfig& c) {
  const int64_t n = c.num_train_timesteps;
  at::Tensor betas;
  if (c.beta_schedule == "linear") {
    betas = at::linspace(c.beta_start, c.beta_end, n, at::kFloat);
  } else if (c.beta_schedule == "scaled_linear") {
    // SD's schedule: linear in √β.
    // beta ** 0.5 as Python computes it (pow, not sqrt: they may differ in the last bit).
    const double lo = std::pow(c.beta_start, 0.5), hi = std::pow(c.beta_end, 0.5);
    betas = at::linspace(lo, hi, n, at::kFloat).pow(2);
  } else {
    betas = cosine_betas(n);
  }
  if (c.rescale_betas_zero_snr) betas = rescale_zero_terminal_snr(betas);
  at::Tensor alphas = 1.0 - betas;
  at::Tensor alphas_cumprod = at::cumprod(alphas, 0);
  return {betas, alphas, alphas_cumprod};
}

Scheduler::Scheduler(SchedulerConfig config)
    : config_(std::move(config)), schedule_(make_noise_schedule(config_)) {}

at::Tensor alphas_cumprod_at(const NoiseSchedule& schedule, const at::Tensor& timesteps,
                             const at::Tensor& like) {
  at::Tensor ac = schedule.alphas_cumprod.to(like.device(), like.scalar_type());
  std::vector<int64_t> shape(like.dim(), 1);
  shape[0] = -1;
  return ac.index_select(0, timesteps.to(like.device(), at::kLong).flatten()).reshape(shape);
}

at::Tensor add_noise(const NoiseSchedule& schedule, const at::Tensor& original,
                     const at::Tensor& noise, const at::Tensor& timesteps) {
  const at::Tensor ac = alphas_cumprod_at(schedule, timesteps, original);
  return at::pow(ac, 0.5) * original + at::pow(1 - ac, 0.5) * noise;
}

at::Tensor Scheduler::add_noise(const at::Tensor& original, const at::Tensor& noise,
                                const at::Tensor& timesteps) const {
  return schedulers::add_noise(schedule_, original, noise, timesteps);
}

const std::vector<std::string>& scheduler_names() {
  static const std::vector<std::string> names{"ddpm",    "ddim", "pndm", "euler", "euler-ancestral",
                                              "dpmpp-2m"};
  return names;
}

std::string resolve_scheduler_name(const std::string& name, const SchedulerConfig& config) {
  static const std::vector<std::pair<std::string, std::string>> classes{
      {"DDPMScheduler", "ddpm"},
      {"DDIMScheduler", "ddim"},
      {"PNDMScheduler", "pndm"},
      {"EulerDiscreteScheduler", "euler"},
      {"EulerAncestralDiscreteScheduler", "euler-ancestral"},
      {"DPMSolverMultistepScheduler", "dpmpp-2m"}};
  const auto& names = scheduler_names();
  if (!name.empty()) {
    if (std::find(names.begin(), names.end(), name) == names.end())
      throw Error("unknown scheduler '" + name +
                  "' (expected one of ddpm, ddim, pndm, euler, euler-ancestral, dpmpp-2m)");
    return name;
  }
  for (const auto& [cls, n] : classes)
    if (cls == config.class_name) return n;
  throw Error("the model's scheduler class '" + config.class_name +
              "' is not supported; choose one with --scheduler (ddpm, ddim, pndm, euler, "
              "euler-ancestral, dpmpp-2m)");
}

std::unique_ptr<Scheduler> make_scheduler(const std::string& name, SchedulerConfig config,
                                          bool karras) {
  const std::string chosen = resolve_scheduler_name(name, config);
  if (karras) config.use_karras_sigmas = true;
  if (chosen == "ddpm") return make_ddpm(std::move(config));
  if (chosen == "ddim") return make_ddim(std::move(config));
  if (chosen == "pndm") return make_pndm(std::move(config));
  if (chosen == "euler") return make_euler(std::move(config));
  if (chosen == "euler-ancestral") return make_euler_ancestral(std::move(config));
  return make_dpm_solver_multistep(std::move(config));
}

std::string sampler_label(const std::string& name, const SchedulerConfig& config) {
  static const std::map<std::string, std::string> labels{{"ddpm", "DDPM"},
                                                         {"ddim", "DDIM"},
                                                         {"pndm", "PLMS"},
                                                         {"euler", "Euler"},
                                                         {"euler-ancestral", "Euler a"},
                                                         {"dpmpp-2m", "DPM++ 2M"}};
  auto it = labels.find(name);
  if (it == labels.end()) throw Error("no sampler label for scheduler '" + name + "'");
  return config.use_karras_sigmas ? it->second + " Karras" : it->second;
}

PredictionType parse_prediction_type(const std::string& name) {
  if (name == "epsilon") return PredictionType::Epsilon;
  if (name == "v_prediction") return PredictionType::VPrediction;
  if (name == "sample") return PredictionType::Sample;
  throw Error("unknown prediction_type '" + name + "' (expected epsilon, v_prediction or sample)");
}

}  // namespace sdtune::schedulers
