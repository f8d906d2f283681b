#include "sdtune/caption/blip_decoding.h"

#include <c10/core/InferenceMode.h>

#include "sdtune/error.h"

namespace sdtune::caption {

at::Tensor blip_generate(models::BlipForConditionalGeneration& model,
                         const at::Tensor& pixel_values, const at::Tensor& prompt_ids,
                         const BlipDecoding& d) {
  const c10::InferenceMode inference;
  const auto& c = model->config;
  if (prompt_ids.dim() != 2 || prompt_ids.size(1) < 2)
    throw Error("prompt ids must be [B, L] with L >= 2 ([CLS] ... [SEP])");
  const at::Tensor image = model->encode_image(pixel_values);
  // [CLS] -> [DEC]; the trailing [SEP] goes, so that the decoder continues the prompt.
  at::Tensor ids = prompt_ids.narrow(1, 0, prompt_ids.size(1) - 1).clone();
  ids.select(1, 0).fill_(c.bos_token_id);
  at::Tensor unfinished = at::ones({ids.size(0)}, ids.options());
  while (ids.size(1) < d.max_length) {
    at::Tensor logits = model->decode(ids, image).select(1, -1);  // [B, vocab]
    // transformers' MinLengthLogitsProcessor: no end before min_length.
    if (ids.size(1) < d.min_length) logits.select(1, c.sep_token_id).fill_(-INFINITY);
    at::Tensor next = logits.argmax(-1);
    next = next * unfinished + c.pad_token_id * (1 - unfinished);
    ids = at::cat({ids, next.unsqueeze(1)}, 1);
    unfinished = unfinished * (next != c.sep_token_id).to(unfinished.scalar_type());
    if (unfinished.max().item<int64_t>() == 0) break;
  }
  return ids;
}

}  // namespace sdtune::caption
