#pragma once
// Captions with BLIP (Salesforce/blip-image-captioning-base or -large, in transformers' layout):
// BLIP's image processor, the model and its tokenizer, from one folder.
#include <filesystem>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "sdtune/caption/blip_decoding.h"
#include "sdtune/models/blip.h"
#include "sdtune/text/bert_tokenizer.h"

namespace sdtune::caption {

// BlipImageProcessor: resize to size × size (bicubic with antialiasing, 8-bit in and out, as
// torchvision resizes uint8 images on the CPU), then (x / 255 - mean) / std per channel.
struct BlipImageProcessor {
  int64_t height = 384, width = 384;
  std::vector<float> mean = {0.48145466f, 0.4578275f, 0.40821073f};
  std::vector<float> std = {0.26862954f, 0.26130258f, 0.27577711f};

  // From preprocessor_config.json, or transformers 5's processor_config.json (defaults where a
  // key is absent).
  static BlipImageProcessor load(const std::filesystem::path& dir);
  // uint8 [H,W,3] images -> float [B,3,height,width].
  at::Tensor operator()(const std::vector<at::Tensor>& images) const;
};

class BlipCaptioner {
 public:
  // DIR: config.json, the safetensors weights, tokenizer.json (or vocab.txt) and, optionally,
  // preprocessor_config.json.
  BlipCaptioner(const std::filesystem::path& dir, c10::Device device, at::ScalarType dtype);

  // One caption per uint8 [H,W,3] image, decoded as transformers' processor.decode does (special
  // tokens left out). `prompt` (e.g. "a picture of") starts every caption, as in BLIP's
  // conditional captioning.
  std::vector<std::string> caption(const std::vector<at::Tensor>& images, const std::string& prompt,
                                   const BlipDecoding& decoding) const;

 private:
  models::BlipForConditionalGeneration model_{nullptr};
  text::BertTokenizer tokenizer_;
  BlipImageProcessor processor_;
  c10::Device device_;
  at::ScalarType dtype_;
};

}  // namespace sdtune::caption
