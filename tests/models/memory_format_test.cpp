// models::to_channels_last: 4-D tensors change layout in place (same tensors, same values), and a
// convolution stack then computes NHWC to the same result.
#include "sdtune/models/memory_format.h"

#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

namespace sdtune::models {
namespace {

TEST(ToChannelsLast, ConvertsFourDimensionalTensorsInPlace) {
  torch::manual_seed(0);
  torch::nn::Sequential net(torch::nn::Conv2d(torch::nn::Conv2dOptions(4, 8, 3).padding(1)),
                            torch::nn::GroupNorm(2, 8),
                            torch::nn::Conv2d(torch::nn::Conv2dOptions(8, 8, 3).padding(1)),
                            torch::nn::Conv2d(torch::nn::Conv2dOptions(8, 4, 1)));
  const at::Tensor x = at::randn({2, 4, 9, 7});
  const at::Tensor before = net->forward(x);
  std::vector<at::Tensor> params = net->parameters();
  std::vector<at::Tensor> values;
  for (const auto& p : params) values.push_back(p.detach().clone());

  // Two 3x3 weights change; the 1x1 one is both layouts already; biases and norms are not 4-D.
  EXPECT_EQ(to_channels_last(*net), 2);
  const std::vector<at::Tensor> after_params = net->parameters();
  for (size_t i = 0; i < params.size(); ++i) {
    EXPECT_TRUE(after_params[i].is_same(params[i]));  // the same tensor (optimizers hold them)
    EXPECT_TRUE(at::equal(after_params[i], values[i]));
    if (params[i].dim() == 4) {
      EXPECT_TRUE(params[i].is_contiguous(at::MemoryFormat::ChannelsLast));
    }
  }
  const at::Tensor nhwc = net->forward(x);
  EXPECT_TRUE(nhwc.is_contiguous(at::MemoryFormat::ChannelsLast));
  EXPECT_TRUE(at::allclose(nhwc, before, 1e-5, 1e-5));
  EXPECT_EQ(to_channels_last(*net), 0);  // nothing left to convert
}

}  // namespace
}  // namespace sdtune::models
