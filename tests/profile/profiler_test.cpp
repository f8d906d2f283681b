// profile::Profiler on the CPU: operators' self time lands in the category of what they compute,
// and the Chrome trace is written. category_of on kernel names as CUDA traces of SD training show
// them (the GPU side runs in bench/gpu_check.sh's profile section).
#include "sdtune/profile/profiler.h"

#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

namespace sdtune::profile {
namespace {

TEST(CategoryOf, CudaKernelNames) {
  EXPECT_EQ(category_of("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc"),
            "convolution");
  EXPECT_EQ(category_of("sm90_xmma_wgrad_implicit_gemm_indexed_wo_smem_bf16"), "convolution");
  EXPECT_EQ(category_of("nvjet_tst_128x256_64x4_2x1_v_bz_coopA_TNT"), "matmul");
  EXPECT_EQ(category_of("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64"), "matmul");
  EXPECT_EQ(category_of("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64>>(...)"),
            "attention");
  EXPECT_EQ(category_of("fmha_cutlassB_f16_aligned_64x64_k64_sm80(...)"), "attention");
  EXPECT_EQ(category_of("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16"),
            "attention");
  EXPECT_EQ(category_of("void at::native::(anonymous namespace)::RowwiseMomentsCUDAKernel<float>"),
            "normalization");
  EXPECT_EQ(category_of("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<"
                        "c10::BFloat16, float>"),
            "normalization");
  // Template arguments do not decide: a random-normal kernel is elementwise, not a norm.
  EXPECT_EQ(category_of("void at::native::vectorized_elementwise_kernel<4, "
                        "at::native::normal_kernel<float>, at::detail::Array<char*, 1>>"),
            "elementwise");
  EXPECT_EQ(category_of("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float>>"),
            "elementwise");
  EXPECT_EQ(category_of("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<"
                        "FusedAdamMathFunctor<float, 4>>"),
            "optimizer");
  EXPECT_EQ(category_of("Memcpy HtoD (Pageable -> Device)"), "copy");
  EXPECT_EQ(category_of("Memset (Device)"), "copy");
  EXPECT_EQ(category_of("void at::native::(anonymous namespace)::CatArrayBatchedCopy<float>"),
            "copy");
}

TEST(CategoryOf, AtenOperators) {
  EXPECT_EQ(category_of("aten::mkldnn_convolution"), "convolution");
  EXPECT_EQ(category_of("aten::convolution_backward"), "convolution");
  EXPECT_EQ(category_of("aten::addmm"), "matmul");
  EXPECT_EQ(category_of("aten::mm"), "matmul");
  EXPECT_EQ(category_of("aten::_scaled_dot_product_flash_attention_for_cpu"), "attention");
  EXPECT_EQ(category_of("aten::native_group_norm"), "normalization");
  EXPECT_EQ(category_of("aten::normal_"), "elementwise");  // randn, not a norm
  EXPECT_EQ(category_of("aten::add_"), "elementwise");
  EXPECT_EQ(category_of("aten::silu"), "elementwise");
  EXPECT_EQ(category_of("aten::_fused_adamw_"), "optimizer");
  EXPECT_EQ(category_of("aten::_foreach_norm"), "optimizer");  // gradient clipping's
  EXPECT_EQ(category_of("aten::copy_"), "copy");
  EXPECT_EQ(category_of("aten::_convert_indices_from_coo_to_csr"), "other");  // not a convolution
  EXPECT_EQ(category_of("aten::upsample_bilinear2d"), "elementwise");         // not a linear layer
  EXPECT_EQ(category_of("aten::empty"), "other");
}

TEST(Profiler, CpuSelfTimeByCategory) {
  const auto trace = std::filesystem::temp_directory_path() /
                     ("sdtune_profile_test_" + std::to_string(::getpid()) + ".json");
  at::manual_seed(0);
  const at::Tensor x = at::randn({4, 32, 32, 32}), w = at::randn({32, 32, 3, 3});
  const at::Tensor a = at::randn({256, 256}), q = at::randn({2, 4, 64, 32});
  Breakdown b;
  {
    Profiler profiler(/*cuda=*/false);
    for (int i = 0; i < 3; ++i) {
      at::conv2d(x, w, {}, 1, 1).sum();
      at::mm(a, a);
      at::scaled_dot_product_attention(q, q, q);
      at::group_norm(x, 8);
    }
    b = profiler.stop(trace);
  }
  EXPECT_EQ(b.timeline, "cpu");
  std::map<std::string, CategoryTime> by;
  for (const auto& c : b.categories) by[c.category] = c;
  for (const char* c : {"convolution", "matmul", "attention", "normalization", "elementwise"}) {
    ASSERT_TRUE(by.count(c)) << c;
    EXPECT_GT(by[c].seconds, 0) << c;
  }
  EXPECT_EQ(by["matmul"].count, 3);  // aten::mm itself; nothing else here is a matmul
  // Self times do not count a parent and its child twice: on one thread they fit in the span.
  EXPECT_LE(b.busy_seconds, b.span_seconds * 1.001);
  double sum = 0;
  for (const auto& c : b.categories) sum += c.seconds;
  EXPECT_NEAR(sum, b.busy_seconds, 1e-9);
  ASSERT_FALSE(b.top.empty());
  for (size_t i = 1; i < b.categories.size(); ++i)
    EXPECT_GE(b.categories[i - 1].seconds, b.categories[i].seconds);

  // The Chrome trace: JSON with the operators in it.
  std::ifstream in(trace);
  const nlohmann::json j = nlohmann::json::parse(in);
  bool conv = false;
  for (const auto& e : j.at("traceEvents"))
    if (e.value("name", "") == "aten::conv2d") conv = true;
  EXPECT_TRUE(conv);
  std::filesystem::remove(trace);
  EXPECT_NE(b.table().find("convolution"), std::string::npos);
  EXPECT_EQ(b.to_json().at("categories").size(), b.categories.size());
}

TEST(Profiler, OneAtATime) {
  Profiler first(false);
  EXPECT_ANY_THROW(Profiler second(false));
  first.stop();
  EXPECT_ANY_THROW(first.stop());
}

}  // namespace
}  // namespace sdtune::profile
