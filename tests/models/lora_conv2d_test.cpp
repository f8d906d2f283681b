// models::LoraConv2d: the branch computes PEFT's Conv2d LoRA update (A with the layer's kernel,
// stride and padding, then B 1×1); a 1×1 branch equals merging B·A into the kernel; without a
// branch the layer is torch's Conv2d. LoRA-capable convolutions are where kohya's LoCon puts them.
#include "sdtune/models/lora_conv2d.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include "sdtune/error.h"
#include "sdtune/lora/adapters.h"
#include "sdtune/models/resnet.h"
#include "sdtune/models/transformer_2d.h"

namespace sdtune::models {
namespace {

double rel(const at::Tensor& a, const at::Tensor& b) {
  return ((a - b).abs().max() / b.abs().max()).item<double>();
}

TEST(LoraConv2d, WithoutBranchIsAConv2d) {
  at::manual_seed(0);
  LoraConv2d conv(torch::nn::Conv2dOptions(3, 5, 3).stride(2).padding(1));
  const at::Tensor x = at::randn({2, 3, 9, 9});
  EXPECT_TRUE(at::equal(conv(x), at::conv2d(x, conv->weight, conv->bias, 2, 1)));
  std::vector<std::string> names;
  for (const auto& p : conv->named_parameters()) names.push_back(p.key());
  EXPECT_EQ(names, (std::vector<std::string>{"weight", "bias"}));
}

TEST(LoraConv2d, BranchUsesTheLayersGeometryAndTrainsOnlyAB) {
  at::manual_seed(1);
  LoraConv2d conv(torch::nn::Conv2dOptions(3, 5, 3).stride(2).padding(1));
  for (auto& p : conv->parameters()) p.set_requires_grad(false);
  auto branch = std::make_shared<LoraBranch>();
  branch->down = at::randn({2, 3, 3, 3}).requires_grad_(true);
  branch->up = at::randn({5, 2, 1, 1}).requires_grad_(true);
  branch->scale = 0.5;
  conv->lora = branch;
  const at::Tensor x = at::randn({2, 3, 9, 9});
  // A is itself a stride-2, padding-1 3×3 conv, so B·A is a 3×3 kernel: the merged layer.
  const at::Tensor merged =
      conv->weight + branch->scale * at::einsum("or,rikl->oikl", {branch->up.detach().flatten(1),
                                                                  branch->down.detach()});
  const at::Tensor y = conv(x);
  EXPECT_EQ(y.sizes(), (at::IntArrayRef{2, 5, 5, 5}));
  EXPECT_LT(rel(y, at::conv2d(x, merged, conv->bias, 2, 1)), 1e-5);
  y.square().sum().backward();
  EXPECT_FALSE(conv->weight.grad().defined());
  EXPECT_TRUE(branch->down.grad().defined());
  EXPECT_TRUE(branch->up.grad().defined());
}

TEST(LoraConv2d, AdaptersGoOnResnetConvsAndSamplers) {
  ResnetBlock2D block(
      ResnetBlock2DOptions{.in_channels = 8, .out_channels = 16, .temb_channels = 4, .groups = 4});
  at::manual_seed(2);
  const at::Tensor x = at::randn({1, 8, 6, 6}), temb = at::randn({1, 4});
  const at::Tensor before = block(x, temb);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(0);
  const auto adapters = lora::attach_adapters(
      *block, {.rank = 2, .alpha = 4, .targets = {"conv1", "conv2", "conv_shortcut"}}, gen);
  ASSERT_EQ(adapters.size(), 3u);
  EXPECT_EQ(adapters[0].module, "conv1");
  EXPECT_EQ(adapters[0].branch->down.sizes(), (at::IntArrayRef{2, 8, 3, 3}));
  EXPECT_EQ(adapters[0].branch->up.sizes(), (at::IntArrayRef{16, 2, 1, 1}));
  EXPECT_EQ(adapters[2].module, "conv_shortcut");
  EXPECT_EQ(adapters[2].branch->down.sizes(), (at::IntArrayRef{2, 8, 1, 1}));
  // PEFT's kaiming-uniform bound for a convolution: 1/√(in·kh·kw).
  EXPECT_LE(adapters[0].branch->down.abs().max().item<double>(), 1.0 / std::sqrt(8.0 * 9.0));
  EXPECT_GT(adapters[0].branch->down.abs().max().item<double>(), 0.5 / std::sqrt(8.0 * 9.0));
  // B = 0: nothing changes until training moves B; then the output moves.
  EXPECT_TRUE(at::equal(block(x, temb), before));
  {
    at::NoGradGuard no_grad;
    adapters[1].branch->up.fill_(0.1);
  }
  EXPECT_FALSE(at::equal(block(x, temb), before));
  // A target naming no LoRA-capable layer is an error (norm1 is a GroupNorm).
  EXPECT_THROW(lora::attach_adapters(*block, {.rank = 2, .targets = {"conv1", "norm1"}}, gen),
               Error);
}

}  // namespace
}  // namespace sdtune::models
