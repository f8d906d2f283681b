#include "sdtune/io/state_dict.h"

#include <gtest/gtest.h>
#include <torch/nn/modules/linear.h>

#include "sdtune/error.h"
#include "sdtune/io/tensor.h"

namespace sdtune::io {
namespace {

struct TinyImpl : torch::nn::Module {
  TinyImpl() {
    lin = register_module("lin", torch::nn::Linear(3, 2));
    register_buffer("scale", at::ones({2}));
  }
  torch::nn::Linear lin{nullptr};
};

std::string error_of(torch::nn::Module& m, const StateDict& s) {
  try {
    load_into(m, s, "tiny.safetensors");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(StateDict, LoadsByNameAndConvertsDtype) {
  TinyImpl m;
  StateDict s{{"lin.weight", at::arange(6, at::kDouble).view({2, 3})},
              {"lin.bias", at::full({2}, 0.5, at::kHalf)},
              {"scale", at::full({2}, 2.0)}};
  load_into(m, s, "tiny");
  EXPECT_TRUE(m.lin->weight.equal(at::arange(6, at::kFloat).view({2, 3})));
  EXPECT_EQ(m.lin->bias.scalar_type(), at::kFloat);
  EXPECT_FLOAT_EQ(m.lin->bias[1].item<float>(), 0.5f);
  EXPECT_FLOAT_EQ(m.named_buffers()["scale"][0].item<float>(), 2.0f);
}

TEST(StateDict, ReportsMissingUnexpectedAndMismatchedByName) {
  TinyImpl m;
  StateDict s{{"lin.weight", at::zeros({3, 3})},
              {"extra.weight", at::zeros({1})},
              {"scale", at::ones({2})}};
  std::string e = error_of(m, s);
  EXPECT_NE(e.find("tiny.safetensors"), std::string::npos) << e;
  EXPECT_NE(e.find("missing keys (1): lin.bias"), std::string::npos) << e;
  EXPECT_NE(e.find("lin.weight (expected [2,3], got [3,3])"), std::string::npos) << e;
  EXPECT_NE(e.find("unexpected keys (1): extra.weight"), std::string::npos) << e;
  // Nothing was copied when the check failed.
  EXPECT_FALSE(m.lin->weight.equal(at::zeros({2, 3})));
}

TEST(StateDict, RoundTripThroughSafetensors) {
  TinyImpl a, b;
  auto path = std::filesystem::temp_directory_path() / "sdtune_state_dict_test.safetensors";
  write_tensors(path, state_dict_of(a));
  load_into(b, read_state_dict({path}), path.string());
  EXPECT_TRUE(a.lin->weight.equal(b.lin->weight));
  EXPECT_TRUE(a.lin->bias.equal(b.lin->bias));
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace sdtune::io
