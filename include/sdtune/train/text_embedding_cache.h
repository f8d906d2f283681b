#pragma once
// The frozen text encoder's outputs for the training captions, computed once and kept on disk
// (kohya's --cache_text_encoder_outputs_to_disk): with the text encoder frozen, a caption's
// embedding never changes, so the encoder need not run at every step. Only for a frozen encoder.
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

class TextEmbeddingCache {
 public:
  // `scope` names everything an entry depends on besides the token ids: the text encoder
  // (config and weights, by content) and the precision it runs in.
  TextEmbeddingCache(std::filesystem::path dir, std::string scope)
      : store_(std::move(dir)), scope_(std::move(scope)) {}

  // last_hidden_state [77, D] (CPU) of every caption, given as its padded token ids; read from
  // the cache or computed with `text_encoder` (on its device, under `autocast`, as training runs
  // it) and stored. Captions that repeat share one tensor.
  std::vector<at::Tensor> prepare(const std::vector<std::vector<int64_t>>& token_ids,
                                  models::CLIPTextModel text_encoder,
                                  std::optional<at::ScalarType> autocast);

  int64_t hits() const { return hits_; }
  int64_t computed() const { return computed_; }

  // The scope string of a pipeline's text encoder: config.json and weight files hashed by
  // content, its weights' dtype and the autocast dtype.
  static std::string scope_of(const io::ModelFolder& base, const std::string& variant,
                              at::ScalarType dtype, std::optional<at::ScalarType> autocast);

 private:
  io::TensorCache store_;
  std::string scope_;
  int64_t hits_ = 0, computed_ = 0;
};

}  // namespace sdtune::train
