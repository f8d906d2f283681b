#include "sdtune/train/adamw.h"

#include <cmath>
#include <vector>

#include <gtest/gtest.h>

#include "sdtune/error.h"
#include "sdtune/train/ema.h"
#include "sdtune/train/lr_schedule.h"

namespace sdtune::train {
namespace {

std::vector<at::Tensor> make_params(uint64_t seed) {
  at::manual_seed(seed);
  return {at::randn({4, 3}).set_requires_grad(true), at::randn({5}).set_requires_grad(true),
          at::randn({2, 2, 2}).set_requires_grad(true)};
}

std::vector<at::Tensor> clone_all(const std::vector<at::Tensor>& ts) {
  std::vector<at::Tensor> out;
  for (const auto& t : ts) out.push_back(t.detach().clone().set_requires_grad(true));
  return out;
}

AdamW make_opt(const std::vector<at::Tensor>& p) {
  return AdamW({{{p[0], p[1]}, 1e-2, 1e-2}, {{p[2]}, 3e-3, 0.0}});
}

// Gradients for step k, the same for any parameter set of make_params' shapes.
void set_grads(const std::vector<at::Tensor>& p, int k) {
  for (size_t j = 0; j < p.size(); ++j) {
    at::Tensor g = at::sin(at::arange(p[j].numel(), at::kFloat) * (k + 1) + j).view(p[j].sizes());
    at::Tensor param = p[j];
    param.mutable_grad() = g;
  }
}

std::string error_of(AdamW& opt, const io::StateDict& state) {
  try {
    opt.load_state_dict(state);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(AdamW, StateDictRoundTripGivesIdenticalSteps) {
  auto p = make_params(0);
  AdamW opt = make_opt(p);
  for (int k = 0; k < 3; ++k) {
    set_grads(p, k);
    opt.step();
    opt.zero_grad();
  }
  const io::StateDict saved = opt.state_dict();
  EXPECT_EQ(saved.size(), 9u);
  EXPECT_EQ(saved.at("group0.param1.step").item<float>(), 3.0f);
  auto q = clone_all(p);
  AdamW resumed = make_opt(q);
  resumed.load_state_dict(saved);
  EXPECT_EQ(resumed.state_bytes(), opt.state_bytes());
  for (int k = 3; k < 6; ++k) {
    set_grads(p, k);
    set_grads(q, k);
    opt.step();
    resumed.step();
  }
  for (size_t j = 0; j < p.size(); ++j) EXPECT_TRUE(p[j].equal(q[j])) << j;
  const auto a = opt.state_dict(), b = resumed.state_dict();
  for (const auto& [key, t] : a) EXPECT_TRUE(t.equal(b.at(key))) << key;
}

TEST(AdamW, ZeroGradDropsGradients) {
  auto p = make_params(1);
  AdamW opt = make_opt(p);
  set_grads(p, 0);
  opt.zero_grad();
  for (const auto& t : p) EXPECT_FALSE(t.grad().defined());
}

TEST(AdamW, ParamsWithoutGradAreUntouched) {
  auto p = make_params(2);
  const at::Tensor before = p[1].detach().clone();
  AdamW opt = make_opt(p);
  set_grads(p, 0);
  at::Tensor p1 = p[1];
  p1.mutable_grad().reset();
  const at::Tensor p0_before = p[0].detach().clone();
  opt.step();
  EXPECT_TRUE(p[1].equal(before));
  EXPECT_FALSE(p[0].equal(p0_before));
  const auto state = opt.state_dict();
  EXPECT_EQ(state.count("group0.param1.exp_avg"), 0u);
  EXPECT_EQ(state.count("group0.param0.exp_avg"), 1u);
  EXPECT_EQ(opt.num_parameters(), 12 + 5 + 8);
  // exp_avg + exp_avg_sq (float32) + a float32 step, for params 0 and 2.
  EXPECT_EQ(opt.state_bytes(), 2 * 4 * (12 + 8) + 2 * 4);
}

TEST(AdamW, FoundInfSkipsTheStep) {
  auto p = make_params(3);
  AdamW opt = make_opt(p);
  set_grads(p, 0);
  opt.step();
  auto before = clone_all(p);
  const auto state_before = opt.state_dict();
  set_grads(p, 1);
  opt.step(at::scalar_tensor(2.0f), at::scalar_tensor(1.0f));
  for (size_t j = 0; j < p.size(); ++j) EXPECT_TRUE(p[j].equal(before[j]));
  for (const auto& [key, t] : opt.state_dict()) EXPECT_TRUE(t.equal(state_before.at(key))) << key;
}

TEST(AdamW, LoadStateDictNamesProblems) {
  auto p = make_params(4);
  AdamW opt = make_opt(p);
  set_grads(p, 0);
  opt.step();
  io::StateDict state = opt.state_dict();
  state.erase("group1.param0.exp_avg_sq");
  state["group0.param0.exp_avg"] = at::zeros({3, 4});
  state["group2.param0.step"] = at::zeros({});
  AdamW other = make_opt(clone_all(p));
  const std::string msg = error_of(other, state);
  EXPECT_NE(msg.find("missing keys (1): group1.param0.exp_avg_sq"), std::string::npos) << msg;
  EXPECT_NE(msg.find("group0.param0.exp_avg (expected [4,3], got [3,4])"), std::string::npos)
      << msg;
  EXPECT_NE(msg.find("unexpected keys (1): group2.param0.step"), std::string::npos) << msg;
  EXPECT_EQ(other.state_bytes(), 0);  // nothing loaded
}

TEST(AdamW, RejectsBadParams) {
  at::Tensor ints = at::zeros({2}, at::kLong);
  EXPECT_THROW(AdamW({{{ints}, 1e-3, 0.0}}), Error);
  at::Tensor p = at::zeros({2}).set_requires_grad(true);
  EXPECT_THROW(AdamW({{{p}, 1e-3, 0.0}, {{p}, 1e-3, 0.0}}), Error);
  AdamW opt({{{p}, 1e-3, 0.0}});
  opt.set_lr(0, 0.5);
  EXPECT_EQ(opt.lr(0), 0.5);
  EXPECT_THROW(opt.set_lr(1, 0.5), Error);
}

TEST(LrSchedule, UnknownNameListsValidOnes) {
  try {
    LrSchedule("cosine_annealing", {});
    FAIL();
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("'cosine_annealing'"), std::string::npos);
    EXPECT_NE(msg.find("constant_with_warmup"), std::string::npos);
  }
}

TEST(LrSchedule, WarmupThenLinearDecay) {
  LrScheduleOptions o;
  o.warmup_steps = 4;
  o.total_steps = 12;
  LrSchedule s("linear", o);
  EXPECT_EQ(s.multiplier(0), 0.0);  // the first optimizer step runs at lr 0, as in diffusers
  EXPECT_EQ(s.multiplier(2), 0.5);
  EXPECT_EQ(s.multiplier(4), 1.0);
  EXPECT_EQ(s.multiplier(8), 0.5);
  EXPECT_EQ(s.multiplier(20), 0.0);
}

TEST(Ema, DecayFollowsTheFormula) {
  at::Tensor p = at::zeros({2}).set_requires_grad(true);
  Ema plain({p});
  EXPECT_EQ(plain.get_decay(0), 0.0);
  EXPECT_EQ(plain.get_decay(1), 0.0);  // the first step copies the weights
  for (int64_t t : {2, 3, 10, 1000}) {
    const double s = static_cast<double>(t - 1);
    EXPECT_DOUBLE_EQ(plain.get_decay(t), (1 + s) / (10 + s)) << t;
  }
  EXPECT_DOUBLE_EQ(plain.get_decay(100000000), 0.9999);  // capped at decay

  EmaOptions o;
  o.use_ema_warmup = true;
  o.update_after_step = 3;
  o.min_decay = 0.1;
  Ema warm({p}, o);
  EXPECT_EQ(warm.get_decay(4), 0.0);
  for (int64_t t : {5, 6, 50}) {
    const double s = static_cast<double>(t - 3 - 1);
    EXPECT_DOUBLE_EQ(warm.get_decay(t), 1 - std::pow(1 + s, -2.0 / 3.0)) << t;
  }
  o.power = 0.1;  // 1 − 2^(−0.1) ≈ 0.067 at s = 1: raised to min_decay
  EXPECT_DOUBLE_EQ(Ema({p}, o).get_decay(5), 0.1);
}

TEST(Ema, StepMovesShadowTowardsWeights) {
  at::Tensor p = at::full({3}, 1.0f).set_requires_grad(true);
  at::Tensor frozen = at::full({2}, 5.0f);
  Ema ema({p, frozen});
  {
    at::NoGradGuard no_grad;
    p.fill_(3.0f);
    frozen.fill_(7.0f);
  }
  ema.step({p, frozen});  // decay 0: shadow = weights
  EXPECT_TRUE(ema.shadow_params()[0].equal(at::full({3}, 3.0f)));
  {
    at::NoGradGuard no_grad;
    p.fill_(14.0f);
  }
  ema.step({p, frozen});  // decay (1+1)/(10+1) = 2/11: shadow = 3 + (9/11)·11 = 12
  EXPECT_NEAR(ema.shadow_params()[0][0].item<float>(), 12.0f, 1e-5);
  EXPECT_TRUE(ema.shadow_params()[1].equal(at::full({2}, 7.0f)));

  Ema restored({at::zeros({3}).set_requires_grad(true), at::zeros({2})});
  restored.load_state_dict(ema.state_dict());
  EXPECT_EQ(restored.optimization_step(), 2);
  EXPECT_TRUE(restored.shadow_params()[0].equal(ema.shadow_params()[0]));
  at::Tensor target = at::zeros({3});
  at::Tensor target2 = at::zeros({2});
  restored.copy_to({target, target2});
  EXPECT_TRUE(target.equal(ema.shadow_params()[0]));
  io::StateDict bad = ema.state_dict();
  bad.erase("power");
  EXPECT_THROW(restored.load_state_dict(bad), Error);
}

}  // namespace
}  // namespace sdtune::train
