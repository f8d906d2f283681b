#include "schedulers/discretization.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "sdtune/error.h"

namespace sdtune::schedulers {

std::vector<double> np_linspace(double start, double stop, int64_t num) {
  std::vector<double> y(num);
  if (num == 1) {
    y[0] = start;  // NumPy: y = [0] * delta + start
    return y;
  }
  const double step = (stop - start) / static_cast<double>(num - 1);
  for (int64_t i = 0; i < num; ++i) y[i] = static_cast<double>(i) * step + start;
  if (num > 1) y[num - 1] = stop;
  return y;
}

std::vector<double> np_arange(double start, double stop, double step) {
  const double len = std::ceil((stop - start) / step);
  const int64_t n = len > 0 ? static_cast<int64_t>(len) : 0;
  std::vector<double> y(n);
  if (n == 0) return y;
  y[0] = start;
  if (n == 1) return y;
  y[1] = start + step;
  const double delta = y[1] - y[0];
  for (int64_t i = 2; i < n; ++i) y[i] = start + static_cast<double>(i) * delta;
  return y;
}

double np_round(double x) {
  return std::nearbyint(x);
}

std::vector<double> np_interp(const std::vector<double>& x, const std::vector<float>& fp) {
  // NumPy's interp with xp = 0, 1, ..., n − 1: below/above the range the end values, on a grid
  // point the value itself, else slope · (x − x_j) + f_j (and from the right if that is NaN).
  const int64_t n = static_cast<int64_t>(fp.size());
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double v = x[i];
    if (std::isnan(v)) {
      y[i] = v;
    } else if (v < 0) {
      y[i] = fp[0];
    } else if (v > static_cast<double>(n - 1)) {
      y[i] = fp[n - 1];
    } else {
      const int64_t j = static_cast<int64_t>(std::floor(v));
      if (j == n - 1 || static_cast<double>(j) == v) {
        y[i] = fp[j];
      } else {
        const double lo = fp[j], hi = fp[j + 1];
        const double slope = (hi - lo) / 1.0;
        y[i] = slope * (v - static_cast<double>(j)) + lo;
        if (std::isnan(y[i])) {
          y[i] = slope * (v - static_cast<double>(j + 1)) + hi;
          if (std::isnan(y[i]) && lo == hi) y[i] = lo;
        }
      }
    }
  }
  return y;
}

float np_logf(float x_in) {
  // numpy/_core/src/umath/loops_exponent_log.dispatch.c.src, simd_log_FLOAT: x = m · 2^k with
  // m in [√½, √2), log(x) = k·ln2 + P(m − 1)/Q(m − 1), P and Q of degree 5, evaluated with FMAs.
  if (std::isnan(x_in)) return std::numeric_limits<float>::quiet_NaN();
  if (x_in < 0.0f) return -std::numeric_limits<float>::quiet_NaN();
  if (x_in == 0.0f) return -std::numeric_limits<float>::infinity();
  if (std::isinf(x_in)) return std::numeric_limits<float>::infinity();
  constexpr float kP[6] = {0.000000000000000000000e+00f, 9.999999999999998702752e-01f,
                           2.112677543073053063722e+00f, 1.480000633576506585156e+00f,
                           3.808837741388407920751e-01f, 2.589979117907922693523e-02f};
  constexpr float kQ[6] = {1.000000000000000000000e+00f, 2.612677543073109236779e+00f,
                           2.453006071784736363091e+00f, 9.864942958519418960339e-01f,
                           1.546476374983906719538e-01f, 5.875095403124574342950e-03f};
  constexpr float kLogE2 = 0.693147180559945309417232121458176568f;
  constexpr float kSqrt1_2 = 0.707106781186547524400844362104849039f;

  float x = x_in;
  float exponent_bias = 0.0f;
  if (x < FLT_MIN) {  // denormals: scale by 2^100 first
    x *= 0x1p100f;
    exponent_bias = 100.0f;
  }
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  float exponent = static_cast<float>(static_cast<int32_t>(bits >> 23) - 126) - exponent_bias;
  bits = (bits & 0x7fffffu) | (126u << 23);  // mantissa in [0.5, 1)
  float m;
  std::memcpy(&m, &bits, sizeof m);
  if (m <= kSqrt1_2) {
    m = m + m;
    exponent = exponent - 1.0f;
  }
  m = m - 1.0f;
  float num = std::fma(kP[5], m, kP[4]);
  for (int i = 3; i >= 0; --i) num = std::fma(num, m, kP[i]);
  float den = std::fma(kQ[5], m, kQ[4]);
  for (int i = 3; i >= 0; --i) den = std::fma(den, m, kQ[i]);
  return std::fma(exponent, kLogE2, num / den);
}

std::vector<int64_t> ddpm_timesteps(const SchedulerConfig& config, int64_t n) {
  const int64_t train = config.num_train_timesteps;
  std::vector<int64_t> t(n);
  switch (config.timestep_spacing) {
    case TimestepSpacing::Linspace: {
      const auto v = np_linspace(0, static_cast<double>(train - 1), n);
      for (int64_t i = 0; i < n; ++i) t[i] = static_cast<int64_t>(np_round(v[n - 1 - i]));
      break;
    }
    case TimestepSpacing::Leading: {
      const int64_t ratio = train / n;
      for (int64_t i = 0; i < n; ++i) t[i] = (n - 1 - i) * ratio + config.steps_offset;
      break;
    }
    case TimestepSpacing::Trailing: {
      // NumPy's float arange may give one element more than n (e.g. n = 61): so may we.
      const auto v = np_arange(static_cast<double>(train), 0,
                               -static_cast<double>(train) / static_cast<double>(n));
      t.resize(v.size());
      for (size_t i = 0; i < v.size(); ++i) t[i] = static_cast<int64_t>(np_round(v[i])) - 1;
      break;
    }
  }
  return t;
}

std::vector<float> euler_timesteps(const SchedulerConfig& config, int64_t n) {
  const int64_t train = config.num_train_timesteps;
  std::vector<float> t;
  switch (config.timestep_spacing) {
    case TimestepSpacing::Linspace: {
      const auto v = np_linspace(0, static_cast<double>(train - 1), n);
      for (auto it = v.rbegin(); it != v.rend(); ++it) t.push_back(static_cast<float>(*it));
      break;
    }
    case TimestepSpacing::Leading: {
      const int64_t ratio = train / n;
      for (int64_t i = n - 1; i >= 0; --i)
        t.push_back(static_cast<float>(i * ratio) + static_cast<float>(config.steps_offset));
      break;
    }
    case TimestepSpacing::Trailing: {
      const auto v = np_arange(static_cast<double>(train), 0,
                               -static_cast<double>(train) / static_cast<double>(n));
      for (double x : v) t.push_back(static_cast<float>(np_round(x)) - 1.0f);
      break;
    }
  }
  return t;
}

std::vector<float> training_sigmas(const at::Tensor& alphas_cumprod) {
  at::Tensor s = ((1 - alphas_cumprod) / alphas_cumprod).pow(0.5).contiguous();
  const float* p = s.data_ptr<float>();
  return std::vector<float>(p, p + s.numel());
}

std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int64_t n) {
  const double rho = 7.0;
  const std::vector<double> ramp = np_linspace(0, 1, n);
  const double min_inv_rho = std::pow(sigma_min, 1 / rho);
  const double max_inv_rho = std::pow(sigma_max, 1 / rho);
  std::vector<double> sigmas(n);
  for (int64_t i = 0; i < n; ++i)
    sigmas[i] = std::pow(max_inv_rho + ramp[i] * (min_inv_rho - max_inv_rho), rho);
  return sigmas;
}

double sigma_to_t(double sigma, const std::vector<float>& log_sigmas) {
  const int64_t n = static_cast<int64_t>(log_sigmas.size());
  const double log_sigma = std::log(std::max(sigma, 1e-10));
  // low = argmax(cumsum(log_sigma − log_sigmas ≥ 0)): the first index where the running count of
  // log σ_i ≤ log σ is largest, i.e. the last such i (0 if none), capped at n − 2.
  int64_t low = 0, count = 0, best = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (log_sigma - static_cast<double>(log_sigmas[i]) >= 0) ++count;
    if (count > best) {
      best = count;
      low = i;
    }
  }
  low = std::min(low, n - 2);
  const float lo = log_sigmas[low], hi = log_sigmas[low + 1];
  // (lo − hi) is a float32 difference in NumPy (both operands float32); the rest is float64.
  double w = (static_cast<double>(lo) - log_sigma) / static_cast<double>(lo - hi);
  w = std::clamp(w, 0.0, 1.0);
  return (1 - w) * static_cast<double>(low) + w * static_cast<double>(low + 1);
}

at::Tensor randn_tensor(at::IntArrayRef shape, const std::optional<at::Generator>& generator,
                        at::Device device, at::ScalarType dtype) {
  at::Device rand_device = device;
  if (generator && generator->device().type() != device.type()) {
    if (generator->device().is_cpu())
      rand_device = at::kCPU;
    else if (generator->device().is_cuda())
      throw Error("cannot draw a " + device.str() + " tensor from a " + generator->device().str() +
                  " generator");
  }
  at::Tensor noise =
      at::randn(shape, generator, at::TensorOptions().dtype(dtype).device(rand_device));
  return noise.to(device);
}

int64_t index_for_timestep(const at::Tensor& schedule, const at::Tensor& timestep,
                           std::optional<int64_t> fallback) {
  at::Tensor indices = (schedule == timestep.to(schedule.device())).nonzero();
  const int64_t found = indices.size(0);
  if (found == 0) {
    if (fallback) return *fallback;
    throw Error("timestep " + std::to_string(timestep.item<double>()) +
                " is not one of the scheduler's timesteps");
  }
  return indices[found > 1 ? 1 : 0][0].item<int64_t>();
}

}  // namespace sdtune::schedulers
