#include "sdtune/train/text_embedding_cache.h"

#include <ATen/core/grad_mode.h>

#include <map>

#include "sdtune/error.h"
#include "sdtune/io/content_hash.h"
#include "sdtune/models/autocast.h"
#include "sdtune/models/sdxl_text_conditioning.h"

namespace sdtune::train {

std::string TextEmbeddingCache::scope_of(const io::ModelFolder& base, const std::string& variant,
                                         at::ScalarType dtype,
                                         std::optional<at::ScalarType> autocast) {
  io::ContentHash h;
  h.field("sdtune text embedding cache v1").component(base, "text_encoder", variant);
  if (base.has_component("text_encoder_2")) h.component(base, "text_encoder_2", variant);
  return h.field(c10::toString(dtype))
      .field(autocast ? c10::toString(*autocast) : "no autocast")
      .hex();
}

std::vector<CaptionEmbedding> TextEmbeddingCache::prepare(
    const std::vector<std::vector<int64_t>>& token_ids,
    const std::vector<std::vector<int64_t>>& token_ids_2, models::CLIPTextModel text_encoder,
    models::CLIPTextModel text_encoder_2, std::optional<at::ScalarType> autocast) {
  const bool sdxl = !text_encoder_2.is_empty();
  if (sdxl && token_ids_2.size() != token_ids.size())
    throw Error("internal: SDXL captions without the second tokenizer's ids");
  at::NoGradGuard no_grad;
  const c10::Device device = text_encoder->parameters().front().device();
  auto row = [&](const std::vector<int64_t>& ids) {
    return at::tensor(ids, at::kLong).unsqueeze(0).to(device);
  };
  std::map<std::string, CaptionEmbedding> by_key;  // repeated captions: one entry
  std::vector<CaptionEmbedding> out;
  for (size_t i = 0; i < token_ids.size(); ++i) {
    io::ContentHash h;
    h.field(scope_);
    for (int64_t id : token_ids[i]) h.field(id);
    if (sdxl)
      for (int64_t id : token_ids_2[i]) h.field(id);
    const std::string key = h.hex();
    if (auto it = by_key.find(key); it != by_key.end()) {
      out.push_back(it->second);
      continue;
    }
    CaptionEmbedding e;
    const char* context_name = sdxl ? "context" : "last_hidden_state";
    if (auto entry = store_.get(key);
        entry && entry->count(context_name) && (!sdxl || entry->count("text_embeds"))) {
      e.context = entry->at(context_name);
      if (sdxl) e.pooled = entry->at("text_embeds");
      ++hits_;
    } else {
      models::AutocastGuard guard(device.type(), autocast);
      if (sdxl) {
        const auto c = models::sdxl_text_conditioning(text_encoder, text_encoder_2,
                                                      row(token_ids[i]), row(token_ids_2[i]));
        e = {c.context[0].cpu(), c.pooled[0].cpu()};
        store_.put(key, {{"context", e.context}, {"text_embeds", e.pooled}});
      } else {
        e.context = text_encoder->forward(row(token_ids[i])).last_hidden_state[0].cpu();
        store_.put(key, {{"last_hidden_state", e.context}});
      }
      ++computed_;
    }
    by_key.emplace(key, e);
    out.push_back(e);
  }
  return out;
}

}  // namespace sdtune::train
