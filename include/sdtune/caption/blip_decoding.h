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
  int64_t num_beams = 1;    // 1: greedy
  // Beam search: a finished caption's score is its summed log-probability / (its generated
  // length ^ length_penalty); with early_stopping the search ends once num_beams captions are
  // finished, without it when no running beam can beat them any more (transformers' heuristic).
  double length_penalty = 1.0;
  bool early_stopping = false;
};

// Greedy decoding, or beam search as transformers' generate does it (num_beams > 1). `prompt_ids`
// int64 [B,L]: the tokenized prompt as BLIP's processor gives it
// ([CLS] ... [SEP]); its first token becomes [DEC] and its [SEP] is dropped, as transformers does.
// Returns [B,max_length or less]: the prompt, then the caption; rows that ended early are padded
// (greedy: pad_token_id; beam search: as transformers does, with [SEP] where pad_token_id is 0).
at::Tensor blip_generate(models::BlipForConditionalGeneration& model,
                         const at::Tensor& pixel_values, const at::Tensor& prompt_ids,
                         const BlipDecoding& decoding = {});

}  // namespace sdtune::caption
