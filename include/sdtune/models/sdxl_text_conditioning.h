#pragma once
// What SDXL's UNet is conditioned on for a caption: both text encoders' hidden states side by side
// (the context for cross-attention) and the second encoder's projected end-of-text token (the
// pooled vector of the text_time embedding). Generation and training both use it.
#include <cstdint>

#include <ATen/ATen.h>

#include "sdtune/models/clip_text_model.h"

namespace sdtune::models {

struct SdxlTextConditioning {
  at::Tensor context;  // [B, 77, hidden_1 + hidden_2]
  at::Tensor pooled;   // [B, projection_dim]
};

// ids_1 / ids_2: [B, 77] token ids from each encoder's own tokenizer. The hidden states are those
// clip_skip + 1 layers before the last (the penultimate by default), without the final layer
// norm, as diffusers' SDXL encode_prompt takes them.
SdxlTextConditioning sdxl_text_conditioning(CLIPTextModel& text_encoder_1,
                                            CLIPTextModel& text_encoder_2, const at::Tensor& ids_1,
                                            const at::Tensor& ids_2, int64_t clip_skip = 0);

}  // namespace sdtune::models
