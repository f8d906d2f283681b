// lora::attach_adapters: PEFT-initialized branches on the targeted LoraLinear layers, which leave
// the model's outputs unchanged until B moves (B = 0), and detach cleanly.
#include "sdtune/lora/adapters.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cmath>

#include "sdtune/error.h"
#include "sdtune/models/attention.h"
#include "sdtune/models/transformer_2d.h"

namespace sdtune::lora {
namespace {

using models::Attention;
using models::AttentionOptions;

TEST(LoraAdapters, AttachToAttentionProjectionsAsPeft) {
  at::manual_seed(3);
  Attention attn(
      AttentionOptions{.query_dim = 16, .cross_attention_dim = 12, .heads = 2, .dim_head = 8});
  const at::Tensor x = at::randn({2, 5, 16}), ctx = at::randn({2, 7, 12});
  const at::Tensor before = attn(x, ctx);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(0);
  const auto adapters = attach_adapters(
      *attn, {.rank = 4, .alpha = 8, .targets = {"to_q", "to_k", "to_v", "to_out.0"}}, gen);
  ASSERT_EQ(adapters.size(), 4u);
  // Drawn in the sorted order of the module paths, one layer after the other.
  EXPECT_EQ(adapters[0].module, "to_k");
  EXPECT_EQ(adapters[1].module, "to_out.0");
  EXPECT_EQ(adapters[2].module, "to_q");
  EXPECT_EQ(adapters[3].module, "to_v");
  at::Generator replay = at::make_generator<at::CPUGeneratorImpl>(0);
  for (const auto& a : adapters) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(a.branch->down.size(1)));
    EXPECT_TRUE(at::equal(a.branch->down,
                          at::empty(a.branch->down.sizes()).uniform_(-bound, bound, replay)))
        << a.module;
  }
  for (const auto& a : adapters) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(a.branch->down.size(1)));
    EXPECT_EQ(a.branch->down.size(0), 4);
    EXPECT_LE(a.branch->down.abs().max().item<double>(), bound);
    EXPECT_GT(a.branch->down.abs().max().item<double>(), 0.5 * bound);
    EXPECT_EQ(a.branch->up.abs().max().item<double>(), 0.0);
    EXPECT_DOUBLE_EQ(a.branch->scale, 2.0);
  }
  // B = 0: the attention computes what it did before.
  EXPECT_TRUE(at::equal(attn(x, ctx), before));
  // Moving B changes it; detaching restores the plain layers.
  at::NoGradGuard no_grad;
  adapters[0].branch->up.normal_();
  EXPECT_FALSE(at::equal(attn(x, ctx), before));
  detach_adapters(*attn);
  EXPECT_TRUE(at::equal(attn(x, ctx), before));
}

TEST(LoraAdapters, FeedForwardAndProjectionsAreTargetsToo) {
  // SD 2.x's linear proj_in/proj_out and the GEGLU feed-forward (PEFT names: "proj_in",
  // "ff.net.0.proj", "ff.net.2").
  models::Transformer2DOptions o;
  o.in_channels = 16;
  o.heads = 2;
  o.dim_head = 8;
  o.cross_attention_dim = 12;
  o.norm_num_groups = 4;
  o.use_linear_projection = true;
  models::Transformer2DModel t(o);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(0);
  const auto adapters = attach_adapters(
      *t, {.rank = 2, .alpha = 2, .targets = {"proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"}},
      gen);
  std::vector<std::string> names;
  for (const auto& a : adapters) names.push_back(a.module);
  EXPECT_EQ(names,
            (std::vector<std::string>{"proj_in", "proj_out", "transformer_blocks.0.ff.net.0.proj",
                                      "transformer_blocks.0.ff.net.2"}));
}

TEST(LoraAdapters, BadOptionsAreErrors) {
  Attention attn(AttentionOptions{.query_dim = 16, .heads = 2, .dim_head = 8});
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(0);
  EXPECT_THROW(attach_adapters(*attn, {.rank = 0, .targets = {"to_q"}}, gen), Error);
  EXPECT_THROW(attach_adapters(*attn, {.rank = 4, .targets = {"proj_in"}}, gen), Error);
}

}  // namespace
}  // namespace sdtune::lora
