#pragma once
// The frozen text encoder's outputs for the training captions, computed once and kept on disk
// (kohya's --cache_text_encoder_outputs_to_disk): with the text encoder frozen, a caption's
// embedding never changes, so the encoder need not run at every step. Only for a frozen encoder.
// SDXL: both encoders' hidden states side by side and the second one's pooled projection
// (models/sdxl_text_conditioning.h), as train_text_to_image_sdxl.py precomputes them.
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "sdtune/io/model_folder.h"
#include "sdtune/io/tensor_cache.h"
#include "sdtune/models/clip_text_model.h"

namespace sdtune::train {

// What a caption conditions the UNet with: the text encoder's last hidden state [77, D] or, for
// SDXL, both encoders' penultimate hidden states [77, D1 + D2] and `pooled` [P].
struct CaptionEmbedding {
  at::Tensor context, pooled;
};

class TextEmbeddingCache {
 public:
  // `scope` names everything an entry depends on besides the token ids: the text encoder
  // (config and weights, by content) and the precision it runs in.
  TextEmbeddingCache(std::filesystem::path dir, std::string scope)
      : store_(std::move(dir)), scope_(std::move(scope)) {}

  // The embedding (CPU) of every caption, given as its padded token ids (and, for SDXL, the
  // second tokenizer's in `token_ids_2`); read from the cache or computed with the encoders (on
  // their device, under `autocast`, as training runs them) and stored. Captions that repeat share
  // one entry. `text_encoder_2` is empty but for SDXL.
  std::vector<CaptionEmbedding> prepare(const std::vector<std::vector<int64_t>>& token_ids,
                                        const std::vector<std::vector<int64_t>>& token_ids_2,
                                        models::CLIPTextModel text_encoder,
                                        models::CLIPTextModel text_encoder_2,
                                        std::optional<at::ScalarType> autocast);

  int64_t hits() const { return hits_; }
  int64_t computed() const { return computed_; }

  // The scope string of a pipeline's text encoder(s): config.json and weight files hashed by
  // content, their weights' dtype and the autocast dtype.
  static std::string scope_of(const io::ModelFolder& base, const std::string& variant,
                              at::ScalarType dtype, std::optional<at::ScalarType> autocast);

 private:
  io::TensorCache store_;
  std::string scope_;
  int64_t hits_ = 0, computed_ = 0;
};

}  // namespace sdtune::train
