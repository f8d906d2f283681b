#include "sdtune/models/sdxl_text_conditioning.h"

#include "sdtune/error.h"

namespace sdtune::models {

SdxlTextConditioning sdxl_text_conditioning(CLIPTextModel& text_encoder_1,
                                            CLIPTextModel& text_encoder_2, const at::Tensor& ids_1,
                                            const at::Tensor& ids_2, int64_t clip_skip) {
  if (text_encoder_2->config.projection_dim == 0)
    throw Error("SDXL's second text encoder must be a CLIPTextModelWithProjection");
  auto hidden = [&](CLIPTextModel& encoder, const at::Tensor& ids, CLIPTextOutput* keep) {
    CLIPTextOutput out = encoder->forward(ids, /*output_hidden_states=*/true);
    const int64_t n = static_cast<int64_t>(out.hidden_states.size());
    if (clip_skip < 0 || n - 2 - clip_skip < 0)
      throw Error("clip skip " + std::to_string(clip_skip) + " out of range [0, " +
                  std::to_string(n - 1) + ")");
    at::Tensor h = out.hidden_states[n - 2 - clip_skip];
    if (keep) *keep = std::move(out);
    return h;
  };
  CLIPTextOutput second;
  at::Tensor h1 = hidden(text_encoder_1, ids_1, nullptr);
  at::Tensor h2 = hidden(text_encoder_2, ids_2, &second);
  return {at::cat({h1, h2}, -1), second.text_embeds};
}

}  // namespace sdtune::models
