// Test driver: runs N training-loop updates (AdamW, or with --optimizer adafactor Adafactor, over
// two parameter groups, a named LR schedule
// setting both groups' lr every step, and two EMAs of the weights) on gradients read from a file,
// so that tests/train/test_optim.py can compare it with torch.optim.AdamW(fused=True),
// diffusers.optimization.get_scheduler and diffusers.training_utils.EMAModel doing the same.
//
//   sdtune_optim_check --inputs in.safetensors --out out.safetensors --steps N
//       --schedule NAME --warmup W --total T --lr A,B --wd C,D [--num-cycles K] [--power P]
//       [--grad-scale S] [--found-inf-step K] [--optimizer adamw|adafactor]
//       [--adafactor-relative-step B] [--adafactor-scale-parameter B] [--adafactor-warmup-init]
//       [--adafactor-beta1 B1] [--adafactor-clip-threshold C] [--adafactor-decay-rate R]
//
// Inputs: "param.{j}" (j = 0..3; group 0 holds params 0 and 1, group 1 params 2 and 3),
// "grad.{k}.{j}" (the gradient of param j at step k; absent: no gradient that step), "frozen"
// (a weight without grad) and "frozen.{k}" (its value set at step k, which the EMA copies).
// With --grad-scale the gradients are taken as scaled by S (the loss scaler's) and the optimizer
// gets grad_scale = S and found_inf = 1 at step --found-inf-step, 0 otherwise.
// Outputs: "param.{j}", "frozen", "opt.{optimizer state_dict key}", "lr.{g}" (float64 [N]),
// "ema.shadow.{j}" / "ema_warmup.shadow.{j}" (j = 0..4, 4 = frozen), "ema.decay" /
// "ema_warmup.decay" (float64 [N]); "ema" has the defaults, "ema_warmup" use_ema_warmup with
// update_after_step 2, min_decay 0.05, power 3/4.
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "driver.h"
#include "sdtune/error.h"
#include "sdtune/io/tensor.h"
#include "sdtune/train/adafactor.h"
#include "sdtune/train/adamw.h"
#include "sdtune/train/ema.h"
#include "sdtune/train/lr_schedule.h"

namespace {

using sdtune::Error;
namespace train = sdtune::train;

constexpr int kParams = 4;

std::vector<double> parse_pair(const std::string& text) {
  std::vector<double> out;
  std::stringstream s(text);
  for (std::string item; std::getline(s, item, ',');) out.push_back(std::stod(item));
  if (out.size() != 2) throw Error("expected two comma-separated values, got '" + text + "'");
  return out;
}

struct Args {
  std::string inputs, out, schedule;
  std::string lr, wd;  // "A,B": one value per parameter group
  int64_t steps = 0, warmup = 0, total = 0;
  int64_t num_cycles = 1;
  double power = 1.0;
  std::optional<double> grad_scale;
  int64_t found_inf_step = -1;
  std::string optimizer = "adamw";
  train::AdafactorOptions adafactor;
};

void run(const Args& a) {
  const std::string& inputs = a.inputs;
  const int64_t steps = a.steps;
  const std::vector<double> lr = parse_pair(a.lr), wd = parse_pair(a.wd);
  train::LrScheduleOptions sched_options;
  sched_options.warmup_steps = a.warmup;
  sched_options.total_steps = a.total;
  sched_options.num_cycles = a.num_cycles;
  sched_options.power = a.power;
  sched_options.base_lr = lr[0];  // optimizer.defaults["lr"]

  const auto in = sdtune::io::read_tensors(inputs);
  auto input = [&](const std::string& name) -> const at::Tensor* {
    auto it = in.find(name);
    return it == in.end() ? nullptr : &it->second;
  };
  auto required = [&](const std::string& name) {
    const at::Tensor* t = input(name);
    if (!t) throw Error("missing input tensor", inputs, name);
    return t->clone();
  };

  std::vector<at::Tensor> params;
  for (int j = 0; j < kParams; ++j)
    params.push_back(required("param." + std::to_string(j)).set_requires_grad(true));
  at::Tensor frozen = required("frozen");
  std::vector<at::Tensor> model = params;
  model.push_back(frozen);

  train::LrSchedule schedule(a.schedule, sched_options);
  std::vector<train::ParamGroup> groups{{{params[0], params[1]}, lr[0], wd[0]},
                                        {{params[2], params[3]}, lr[1], wd[1]}};
  std::unique_ptr<train::Optimizer> optimizer;
  if (a.optimizer == "adafactor")
    optimizer = std::make_unique<train::Adafactor>(std::move(groups), a.adafactor);
  else
    optimizer = std::make_unique<train::AdamW>(std::move(groups));
  train::Optimizer& opt = *optimizer;
  train::Ema ema(model);
  train::EmaOptions warm_options;
  warm_options.use_ema_warmup = true;
  warm_options.update_after_step = 2;
  warm_options.min_decay = 0.05;
  warm_options.power = 3.0 / 4.0;
  train::Ema ema_warmup(model, warm_options);

  at::Tensor lrs = at::zeros({2, steps}, at::kDouble);
  at::Tensor decays = at::zeros({2, steps}, at::kDouble);
  for (int64_t k = 0; k < steps; ++k) {
    for (int g = 0; g < 2; ++g) {
      opt.set_lr(g, schedule.lr(lr[g], k));
      lrs[g][k] = opt.lr(g);
    }
    for (int j = 0; j < kParams; ++j) {
      const at::Tensor* grad = input("grad." + std::to_string(k) + "." + std::to_string(j));
      if (grad) params[j].mutable_grad() = grad->clone();
    }
    std::optional<at::Tensor> grad_scale, found_inf;
    if (a.grad_scale) {
      grad_scale = at::scalar_tensor(*a.grad_scale, at::kFloat);
      found_inf = at::scalar_tensor(k == a.found_inf_step ? 1.0 : 0.0, at::kFloat);
    }
    opt.step(grad_scale, found_inf);
    opt.zero_grad();
    for (const auto& p : params)
      if (p.grad().defined()) throw Error("zero_grad left a gradient");
    frozen.copy_(required("frozen." + std::to_string(k)));
    ema.step(model);
    ema_warmup.step(model);
    decays[0][k] = ema.cur_decay_value();
    decays[1][k] = ema_warmup.cur_decay_value();
  }

  std::vector<std::pair<std::string, at::Tensor>> out;
  for (int j = 0; j < kParams; ++j) out.emplace_back("param." + std::to_string(j), params[j]);
  out.emplace_back("frozen", frozen);
  for (const auto& [key, t] : opt.state_dict()) out.emplace_back("opt." + key, t);
  for (int g = 0; g < 2; ++g) out.emplace_back("lr." + std::to_string(g), lrs[g].clone());
  for (size_t j = 0; j < model.size(); ++j) {
    out.emplace_back("ema.shadow." + std::to_string(j), ema.shadow_params()[j]);
    out.emplace_back("ema_warmup.shadow." + std::to_string(j), ema_warmup.shadow_params()[j]);
  }
  out.emplace_back("ema.decay", decays[0].clone());
  out.emplace_back("ema_warmup.decay", decays[1].clone());
  sdtune::io::write_tensors(a.out, out);
  std::cout << "parameters " << opt.num_parameters() << " state_bytes " << opt.state_bytes()
            << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  return sdtune::driver::run_driver(
      argc, argv, "AdamW, an LR schedule and EMAs over gradients read from a file",
      [&](CLI::App& app) {
        app.add_option("--inputs", a.inputs, "Parameters and gradients (.safetensors)")->required();
        app.add_option("--out", a.out, "Output tensors (.safetensors)")->required();
        app.add_option("--steps", a.steps, "Updates")->required();
        app.add_option("--schedule", a.schedule, "LR schedule name")->required();
        app.add_option("--warmup", a.warmup, "LR warmup steps")->required();
        app.add_option("--total", a.total, "Training steps of the LR schedule")->required();
        app.add_option("--lr", a.lr, "Learning rates of groups 0 and 1: A,B")->required();
        app.add_option("--wd", a.wd, "Weight decays of groups 0 and 1: C,D")->required();
        app.add_option("--num-cycles", a.num_cycles, "cosine_with_restarts' cycles")
            ->capture_default_str();
        app.add_option("--power", a.power, "polynomial's power")->capture_default_str();
        app.add_option("--grad-scale", a.grad_scale, "Gradients are scaled by S (loss scaler)");
        app.add_option("--found-inf-step", a.found_inf_step,
                       "With --grad-scale: the step whose found_inf is 1")
            ->capture_default_str();
        app.add_option("--optimizer", a.optimizer, "adamw or adafactor")->capture_default_str();
        auto& af = a.adafactor;
        app.add_option("--adafactor-relative-step", af.relative_step)->capture_default_str();
        app.add_option("--adafactor-scale-parameter", af.scale_parameter)->capture_default_str();
        app.add_flag("--adafactor-warmup-init", af.warmup_init);
        app.add_option("--adafactor-beta1", af.beta1);
        app.add_option("--adafactor-clip-threshold", af.clip_threshold)->capture_default_str();
        app.add_option("--adafactor-decay-rate", af.decay_rate)->capture_default_str();
      },
      [&] { run(a); });
}
