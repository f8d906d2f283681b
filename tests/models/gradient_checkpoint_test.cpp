#include "sdtune/models/gradient_checkpoint.h"

#include <gtest/gtest.h>
#include <torch/nn/modules/linear.h>

namespace sdtune::models {
namespace {

// y = tanh(W·x + b) · s: a parameterised function of two inputs, one of which needs no grad.
struct Fixture {
  torch::nn::Linear linear{torch::nn::LinearOptions(3, 4)};
  int calls = 0;
  at::Tensor fn(const std::vector<at::Tensor>& in) {
    ++calls;
    return at::tanh(linear->forward(in[0])) * in[1];
  }
};

TEST(GradientCheckpoint, SameGradientsAndRecomputes) {
  at::manual_seed(0);
  Fixture f;
  at::Tensor x = at::randn({5, 3}).requires_grad_(), s = at::randn({5, 4});

  // Reference: plain autograd; x is used once more outside to check accumulation into it.
  (f.fn({x * 2, s}).sum() + x.sum()).backward();
  at::Tensor gx = x.grad().clone(), gw = f.linear->weight.grad().clone();
  at::Tensor gb = f.linear->bias.grad().clone();
  x.mutable_grad().zero_();
  f.linear->zero_grad();

  f.calls = 0;
  at::Tensor y = checkpoint([&f](const std::vector<at::Tensor>& in) { return f.fn(in); },
                            {x * 2, s}, f.linear->parameters());
  EXPECT_EQ(f.calls, 1);
  EXPECT_TRUE(y.requires_grad());
  (y.sum() + x.sum()).backward();
  EXPECT_EQ(f.calls, 2);  // recomputed once in backward
  EXPECT_TRUE(at::allclose(x.grad(), gx, 1e-6, 1e-7));
  EXPECT_TRUE(at::allclose(f.linear->weight.grad(), gw, 1e-6, 1e-7));
  EXPECT_TRUE(at::allclose(f.linear->bias.grad(), gb, 1e-6, 1e-7));
  EXPECT_FALSE(s.grad().defined());
}

TEST(GradientCheckpoint, NoGraphKeptInForward) {
  Fixture f;
  at::Tensor x = at::randn({2, 3});  // no input needs grad, but the parameters do
  at::Tensor y = checkpoint([&f](const std::vector<at::Tensor>& in) { return f.fn(in); },
                            {x, at::ones({2, 4})}, f.linear->parameters());
  y.sum().backward();
  EXPECT_TRUE(f.linear->weight.grad().defined());
  EXPECT_EQ(f.calls, 2);
}

}  // namespace
}  // namespace sdtune::models
