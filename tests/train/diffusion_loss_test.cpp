#include "sdtune/train/diffusion_loss.h"

#include <cmath>

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

namespace sdtune::train {
namespace {

// A 3-step toy schedule with ᾱ = [0.9, 0.5, 0.1]: SNR = ᾱ / (1 − ᾱ) = [9, 1, 1/9].
NoiseSchedule toy_schedule() {
  NoiseSchedule s;
  s.alphas_cumprod = at::tensor({0.9f, 0.5f, 0.1f});
  s.alphas = s.alphas_cumprod / at::cat({at::ones({1}), s.alphas_cumprod.slice(0, 0, 2)});
  s.betas = 1 - s.alphas;
  return s;
}

at::Tensor steps(std::initializer_list<int64_t> t) {
  return at::tensor(std::vector<int64_t>(t), at::kLong);
}

TEST(DiffusionLoss, SnrOfToySchedule) {
  at::Tensor s = snr(toy_schedule(), steps({0, 1, 2}));
  EXPECT_NEAR(s[0].item<float>(), 9.0f, 1e-5);
  EXPECT_NEAR(s[1].item<float>(), 1.0f, 1e-6);
  EXPECT_NEAR(s[2].item<float>(), 1.0f / 9.0f, 1e-6);
}

TEST(DiffusionLoss, MinSnrWeightsByHand) {
  at::Tensor s = at::tensor({9.0f, 1.0f, 1.0f / 9.0f});
  // γ = 5: min(SNR, γ) = [5, 1, 1/9].
  at::Tensor eps = min_snr_weights(s, 5.0, PredictionType::Epsilon);  // / SNR
  EXPECT_FLOAT_EQ(eps[0].item<float>(), 5.0f / 9.0f);
  EXPECT_FLOAT_EQ(eps[1].item<float>(), 1.0f);
  EXPECT_FLOAT_EQ(eps[2].item<float>(), 1.0f);
  at::Tensor v = min_snr_weights(s, 5.0, PredictionType::VPrediction);  // / (SNR + 1)
  EXPECT_FLOAT_EQ(v[0].item<float>(), 0.5f);
  EXPECT_FLOAT_EQ(v[1].item<float>(), 0.5f);
  EXPECT_FLOAT_EQ(v[2].item<float>(), (1.0f / 9.0f) / (1.0f / 9.0f + 1.0f));
  at::Tensor x0 = min_snr_weights(s, 5.0, PredictionType::Sample);  // unscaled
  EXPECT_FLOAT_EQ(x0[0].item<float>(), 5.0f);
  EXPECT_FLOAT_EQ(x0[2].item<float>(), 1.0f / 9.0f);
}

TEST(DiffusionLoss, VTargetIdentity) {
  // At ᾱ = 0.5 (t = 1): v = √0.5 · (ε − x₀).
  at::Tensor x0 = at::randn({2, 4, 3, 3}), eps = at::randn({2, 4, 3, 3});
  at::Tensor v =
      training_target(PredictionType::VPrediction, x0, eps, steps({1, 1}), toy_schedule());
  EXPECT_TRUE(at::allclose(v, std::sqrt(0.5) * (eps - x0), 1e-6, 1e-6));
  // Per sample: at t = 0, v = √0.9 · ε − √0.1 · x₀.
  v = training_target(PredictionType::VPrediction, x0, eps, steps({0, 2}), toy_schedule());
  EXPECT_TRUE(at::allclose(v[0], std::sqrt(0.9) * eps[0] - std::sqrt(0.1) * x0[0], 1e-6, 1e-6));
  EXPECT_TRUE(at::allclose(v[1], std::sqrt(0.1) * eps[1] - std::sqrt(0.9) * x0[1], 1e-6, 1e-6));
  EXPECT_TRUE(
      training_target(PredictionType::Epsilon, x0, eps, steps({0, 2}), toy_schedule()).equal(eps));
  EXPECT_TRUE(
      training_target(PredictionType::Sample, x0, eps, steps({0, 2}), toy_schedule()).equal(x0));
}

TEST(DiffusionLoss, NoiseOffsetShapeAndOrder) {
  auto opts = at::TensorOptions().dtype(at::kFloat);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(7);
  at::Tensor noise = sample_noise({2, 4, 5, 5}, gen, 0.1, opts);
  ASSERT_EQ(noise.sizes(), at::IntArrayRef({2, 4, 5, 5}));
  // Replaying the seed: ε first (latent shape), then the [B,C,1,1] offset draw.
  at::Generator replay = at::make_generator<at::CPUGeneratorImpl>(7);
  at::Tensor eps = at::randn({2, 4, 5, 5}, replay, opts);
  at::Tensor offset = at::randn({2, 4, 1, 1}, replay, opts);
  EXPECT_TRUE(at::allclose(noise, eps + 0.1 * offset, 0, 0));
  // Without an offset only ε is drawn.
  at::Generator plain = at::make_generator<at::CPUGeneratorImpl>(7);
  EXPECT_TRUE(sample_noise({2, 4, 5, 5}, plain, 0.0, opts).equal(eps));
}

TEST(DiffusionLoss, TimestepsInRange) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(3);
  at::Tensor t = sample_timesteps(1000, 10, gen);
  EXPECT_EQ(t.scalar_type(), at::kLong);
  EXPECT_GE(t.min().item<int64_t>(), 0);
  EXPECT_LT(t.max().item<int64_t>(), 10);
}

TEST(DiffusionLoss, WeightedLoss) {
  at::Tensor pred = at::zeros({2, 1, 2, 2}), target = at::ones({2, 1, 2, 2});
  target[1].fill_(2.0f);  // per-sample MSE: [1, 4]
  EXPECT_FLOAT_EQ(diffusion_loss(pred, target).item<float>(), 2.5f);
  EXPECT_FLOAT_EQ(diffusion_loss(pred, target, at::tensor({0.5f, 0.25f})).item<float>(), 0.75f);
}

}  // namespace
}  // namespace sdtune::train
