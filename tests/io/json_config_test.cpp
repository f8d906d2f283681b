#include "sdtune/io/json_config.h"

#include <cmath>
#include <fstream>
#include <limits>

#include <gtest/gtest.h>

#include "sdtune/error.h"
#include "sdtune/io/model_folder.h"

namespace sdtune::io {
namespace {
namespace fs = std::filesystem;

fs::path temp_dir(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / ("sdtune_json_test_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

void write(const fs::path& path, const std::string& text) {
  std::ofstream(path) << text;
}

// Expects an sdtune::Error whose message contains every fragment.
template <typename F>
void expect_error(F&& f, std::initializer_list<std::string> fragments) {
  try {
    f();
    FAIL() << "expected an sdtune::Error";
  } catch (const Error& e) {
    for (const auto& frag : fragments)
      EXPECT_NE(std::string(e.what()).find(frag), std::string::npos) << e.what();
  }
}

TEST(JsonConfig, TypedAccessAndDefaults) {
  JsonConfig c(nlohmann::json::parse(
                   R"({"a": 3, "b": 2.5, "c": true, "d": "x", "e": [1,2], "f": null, "g": 8.0})"),
               "cfg");
  EXPECT_EQ(c.get_int("a"), 3);
  EXPECT_EQ(c.get_int("g"), 8);
  EXPECT_DOUBLE_EQ(c.get_double("b"), 2.5);
  EXPECT_DOUBLE_EQ(c.get_double("a"), 3.0);
  EXPECT_TRUE(c.get_bool("c"));
  EXPECT_EQ(c.get_string("d"), "x");
  EXPECT_EQ(c.get_int_list("e"), (std::vector<int64_t>{1, 2}));
  EXPECT_FALSE(c.has("f"));  // null means "use the default"
  EXPECT_EQ(c.get_int("f", 7), 7);
  EXPECT_EQ(c.get_int("zzz", 9), 9);
  EXPECT_EQ(c.get_int_or_list("a", 3), (std::vector<int64_t>{3, 3, 3}));
  EXPECT_EQ(c.get_int_or_list("e", 2), (std::vector<int64_t>{1, 2}));
}

TEST(JsonConfig, ErrorsNameFileAndKey) {
  JsonConfig c(nlohmann::json::parse(R"({"a": "3", "b": 2.5, "e": [1,2]})"), "unet/config.json");
  expect_error([&] { c.get_int("missing"); },
               {"unet/config.json", "'missing'", "missing required key"});
  expect_error([&] { c.get_int("a"); }, {"unet/config.json", "'a'", "expected an integer"});
  expect_error([&] { c.get_int("b"); }, {"'b'", "expected an integer"});
  expect_error([&] { c.get_bool("b"); }, {"'b'", "true or false"});
  expect_error([&] { c.get_int_or_list("e", 3); }, {"'e'", "expected 3 values"});
}

TEST(JsonConfig, LoadErrors) {
  fs::path dir = temp_dir("load");
  expect_error([&] { JsonConfig::load(dir / "nope.json"); }, {"nope.json", "cannot open"});
  write(dir / "bad.json", "{\"a\": ");
  expect_error([&] { JsonConfig::load(dir / "bad.json"); }, {"bad.json", "not valid JSON"});
  write(dir / "list.json", "[1, 2]");
  expect_error([&] { JsonConfig::load(dir / "list.json"); }, {"list.json", "not a JSON object"});
}

TEST(JsonConfig, PythonNonFiniteNumbers) {
  fs::path dir = temp_dir("nonfinite");
  // As Python's json.dump writes them (diffusers' DPM-Solver config has lambda_min_clipped:
  // -Infinity).
  write(dir / "c.json",
        R"({"a": -Infinity, "b": Infinity, "c": NaN, "s": "NaN -Infinity", "l": [Infinity]})");
  auto c = JsonConfig::load(dir / "c.json");
  EXPECT_EQ(c.get_double("a"), -std::numeric_limits<double>::infinity());
  EXPECT_EQ(c.get_double("b"), std::numeric_limits<double>::infinity());
  EXPECT_TRUE(std::isnan(c.get_double("c")));
  EXPECT_EQ(c.get_string("s"), "NaN -Infinity");
  EXPECT_EQ(c.json().at("l")[0].get<double>(), std::numeric_limits<double>::infinity());
}

TEST(ModelFolder, ComponentsAndWeightFiles) {
  fs::path dir = temp_dir("folder");
  write(dir / "model_index.json",
        R"({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
            "safety_checker": [null, null], "vae": ["diffusers", "AutoencoderKL"]})");
  auto folder = ModelFolder::open(dir);
  ASSERT_EQ(folder.components().size(), 2u);
  EXPECT_TRUE(folder.has_component("unet"));
  EXPECT_FALSE(folder.has_component("safety_checker"));
  expect_error([&] { folder.component_dir("unet"); }, {"unet", "component folder not found"});

  fs::create_directories(dir / "unet");
  expect_error([&] { find_weight_files(dir / "unet"); }, {"no safetensors weights"});
  write(dir / "unet" / "diffusion_pytorch_model.fp16.safetensors", "");
  EXPECT_EQ(find_weight_files(dir / "unet").at(0).filename(),
            "diffusion_pytorch_model.fp16.safetensors");
  write(dir / "unet" / "diffusion_pytorch_model.safetensors", "");
  EXPECT_EQ(find_weight_files(dir / "unet").at(0).filename(),
            "diffusion_pytorch_model.safetensors");
  EXPECT_EQ(find_weight_files(dir / "unet", "fp16").at(0).filename(),
            "diffusion_pytorch_model.fp16.safetensors");

  fs::create_directories(dir / "text_encoder");
  write(
      dir / "text_encoder" / "model.safetensors.index.json",
      R"({"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})");
  write(dir / "text_encoder" / "model-00001-of-00002.safetensors", "");
  expect_error([&] { find_weight_files(dir / "text_encoder"); },
               {"model.safetensors.index.json", "model-00002-of-00002"});
  write(dir / "text_encoder" / "model-00002-of-00002.safetensors", "");
  EXPECT_EQ(find_weight_files(dir / "text_encoder").size(), 2u);

  expect_error([&] { ModelFolder::open(dir / "missing"); }, {"missing", "model folder not found"});
}

}  // namespace
}  // namespace sdtune::io
