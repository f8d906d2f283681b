// models::LoraLinear: the branch computes PEFT's LoRA update and trains only A and B; without it
// the layer is torch's Linear.
#include "sdtune/models/lora_linear.h"

#include <gtest/gtest.h>

namespace sdtune::models {
namespace {

double rel(const at::Tensor& a, const at::Tensor& b) {
  return ((a - b).abs().max() / b.abs().max()).item<double>();
}

TEST(LoraLinear, WithoutBranchIsALinear) {
  at::manual_seed(0);
  LoraLinear layer(torch::nn::LinearOptions(6, 5));
  const at::Tensor x = at::randn({3, 6});
  EXPECT_TRUE(at::equal(layer(x), at::linear(x, layer->weight, layer->bias)));
  // The state dict is torch's Linear's.
  std::vector<std::string> names;
  for (const auto& p : layer->named_parameters()) names.push_back(p.key());
  EXPECT_EQ(names, (std::vector<std::string>{"weight", "bias"}));
}

TEST(LoraLinear, BranchAddsScaledLowRankUpdateAndTrainsOnlyIt) {
  at::manual_seed(1);
  LoraLinear layer(torch::nn::LinearOptions(6, 5));
  for (auto& p : layer->parameters()) p.set_requires_grad(false);
  auto branch = std::make_shared<LoraBranch>();
  branch->down = at::randn({2, 6}).requires_grad_(true);
  branch->up = at::randn({5, 2}).requires_grad_(true);
  branch->scale = 3.0 / 2.0;  // alpha 3, rank 2
  layer->lora = branch;
  const at::Tensor x = at::randn({4, 6});
  const at::Tensor merged =
      layer->weight + branch->scale * at::matmul(branch->up.detach(), branch->down.detach());
  EXPECT_LT(rel(layer(x), at::linear(x, merged, layer->bias)), 1e-6);
  // Only A and B receive gradients; they equal autograd's through the explicit formula.
  layer(x).square().sum().backward();
  EXPECT_FALSE(layer->weight.grad().defined());
  const at::Tensor a = branch->down.detach().clone().requires_grad_(true);
  const at::Tensor b = branch->up.detach().clone().requires_grad_(true);
  (at::linear(x, layer->weight) + layer->bias + branch->scale * at::linear(at::linear(x, a), b))
      .square()
      .sum()
      .backward();
  EXPECT_LT(rel(branch->down.grad(), a.grad()), 1e-6);
  EXPECT_LT(rel(branch->up.grad(), b.grad()), 1e-6);
}

TEST(LoraLinear, DropoutOnlyInTraining) {
  at::manual_seed(2);
  LoraLinear layer(torch::nn::LinearOptions(8, 8));
  auto branch = std::make_shared<LoraBranch>();
  branch->down = at::randn({2, 8});
  branch->up = at::randn({8, 2});
  branch->dropout = 0.5;
  layer->lora = branch;
  const at::Tensor x = at::randn({16, 8});
  layer->eval();
  const at::Tensor eval1 = layer(x), eval2 = layer(x);
  EXPECT_TRUE(at::equal(eval1, eval2));
  layer->train();
  EXPECT_FALSE(at::equal(layer(x), eval1));
}

}  // namespace
}  // namespace sdtune::models
