#pragma once
// Caption token ids from BLIP, as transformers' BlipForConditionalGeneration.generate makes them:
// the decoder starts from [DEC] (bos) and an optional prompt ("a picture of"), and adds one token
// at a time until [SEP] or max_length.
#include <ATen/ATen.h>

#include "sdtune/models/blip.h"

namespace sdtune::caption {

struct BlipDecoding {
  int64_t max_length = 20;  // tokens in all, the prompt's included (transformers' default)
  int64_t min_length = 0;   // [SEP] is not allowed before this length
};

// Greedy decoding. `prompt_ids` int64 [B,L]: the tokenized prompt as BLIP's processor gives it
// ([CLS] ... [SEP]); its first token becomes [DEC] and its [SEP] is dropped, as transformers does.
// Returns [B,max_length or less]: the prompt, then the caption; rows that ended early are padded
// with pad_token_id.
at::Tensor blip_generate(models::BlipForConditionalGeneration& model,
                         const at::Tensor& pixel_values, const at::Tensor& prompt_ids,
                         const BlipDecoding& decoding = {});

}  // namespace sdtune::caption
