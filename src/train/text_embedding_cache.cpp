#include "sdtune/train/text_embedding_cache.h"

#include <ATen/core/grad_mode.h>

#include <map>

#include "sdtune/io/content_hash.h"
#include "sdtune/models/autocast.h"

namespace sdtune::train {

std::string TextEmbeddingCache::scope_of(const io::ModelFolder& base, const std::string& variant,
                                         at::ScalarType dtype,
                                         std::optional<at::ScalarType> autocast) {
  return io::ContentHash()
      .field("sdtune text embedding cache v1")
      .component(base, "text_encoder", variant)
      .field(c10::toString(dtype))
      .field(autocast ? c10::toString(*autocast) : "no autocast")
      .hex();
}

std::vector<at::Tensor> TextEmbeddingCache::prepare(
    const std::vector<std::vector<int64_t>>& token_ids, models::CLIPTextModel text_encoder,
    std::optional<at::ScalarType> autocast) {
  at::NoGradGuard no_grad;
  const c10::Device device = text_encoder->parameters().front().device();
  std::map<std::string, at::Tensor> by_key;  // repeated captions: one entry
  std::vector<at::Tensor> out;
  for (const auto& ids : token_ids) {
    io::ContentHash h;
    h.field(scope_);
    for (int64_t id : ids) h.field(id);
    const std::string key = h.hex();
    if (auto it = by_key.find(key); it != by_key.end()) {
      out.push_back(it->second);
      continue;
    }
    at::Tensor embedding;
    if (auto entry = store_.get(key); entry && entry->count("last_hidden_state")) {
      embedding = entry->at("last_hidden_state");
      ++hits_;
    } else {
      models::AutocastGuard guard(device.type(), autocast);
      const at::Tensor input = at::tensor(ids, at::kLong).unsqueeze(0).to(device);
      embedding = text_encoder->forward(input).last_hidden_state[0].cpu();
      store_.put(key, {{"last_hidden_state", embedding}});
      ++computed_;
    }
    by_key.emplace(key, embedding);
    out.push_back(embedding);
  }
  return out;
}

}  // namespace sdtune::train
