#pragma once
// How diffusers discretizes the training schedule into inference timesteps and sigmas. diffusers
// builds these lists with NumPy (float64 unless a dtype says otherwise); every helper here
// reproduces NumPy's arithmetic step by step, so that the lists match to the last bit.
#include <cstdint>
#include <optional>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/core/Generator.h>

#include "sdtune/schedulers/scheduler.h"

namespace sdtune::schedulers {

// np.linspace(start, stop, num): start + i·step with step = (stop − start)/(num − 1), the last
// element set to stop exactly.
std::vector<double> np_linspace(double start, double stop, int64_t num);
// np.arange(start, stop, step) for a float step: ceil((stop − start)/step) elements
// start + i·δ, δ = (start + step) − start (NumPy fills from the first two elements).
std::vector<double> np_arange(double start, double stop, double step);
// np.round: round half to even.
double np_round(double x);
// np.interp(x, arange(len(fp)), fp) in float64.
std::vector<double> np_interp(const std::vector<double>& x, const std::vector<float>& fp);
// np.log on float32 as NumPy computes it on x86-64 with AVX2/AVX512 (its own rational
// approximation, not libm's logf: the two differ in the last bit for ~15% of inputs).
float np_logf(float x);

// The timesteps DDPM, DDIM and PNDM use, in decreasing order:
//   linspace  round(linspace(0, T − 1, n))
//   leading   i · (T // n) + steps_offset
//   trailing  round(arange(T, 0, −T/n)) − 1
std::vector<int64_t> ddpm_timesteps(const SchedulerConfig& config, int64_t n);

// The float32 timesteps of the Euler schedulers, in decreasing order (as ddpm_timesteps, but
// linspace is not rounded, and the offset/−1 are float32 arithmetic).
std::vector<float> euler_timesteps(const SchedulerConfig& config, int64_t n);

// σ_t = √((1 − ᾱ_t)/ᾱ_t) for every training timestep, computed in float32 as diffusers does.
std::vector<float> training_sigmas(const at::Tensor& alphas_cumprod);
// Karras et al. (2022) eq. 5: σ_i = (σ_max^(1/ρ) + i/(n−1) · (σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ, ρ = 7.
std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int64_t n);
// diffusers' _sigma_to_t: the fractional training timestep whose log σ interpolates `sigma`
// linearly between its two neighbours in `log_sigmas` (float32, increasing).
double sigma_to_t(double sigma, const std::vector<float>& log_sigmas);

// diffusers' randn_tensor: a CPU generator draws on the CPU and the noise moves to `device`;
// a generator on another accelerator than `device` is an Error.
at::Tensor randn_tensor(at::IntArrayRef shape, const std::optional<at::Generator>& generator,
                        at::Device device, at::ScalarType dtype);

// The step index of `timestep` in `schedule` (diffusers' index_for_timestep): the second match
// when there are several (so that img2img, starting mid-schedule, does not skip a sigma), else
// the only one; `fallback` when there is none (an Error if not given).
int64_t index_for_timestep(const at::Tensor& schedule, const at::Tensor& timestep,
                           std::optional<int64_t> fallback = std::nullopt);

}  // namespace sdtune::schedulers
