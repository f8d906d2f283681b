#include "sdtune/caption/blip_decoding.h"

#include <c10/core/InferenceMode.h>

#include <cmath>
#include <vector>

#include "sdtune/error.h"

namespace sdtune::caption {

namespace {

// Gathers along dim 1 of x [B,N,...] by index [B,M]: x[b, index[b, m], ...].
at::Tensor gather_beams(const at::Tensor& x, const at::Tensor& index) {
  at::Tensor i = index;
  for (int64_t d = 2; d < x.dim(); ++d) i = i.unsqueeze(-1);
  std::vector<int64_t> shape = x.sizes().vec();
  shape[1] = index.size(1);
  return x.gather(1, i.expand(shape));
}

// transformers' vectorised beam search (GenerationMixin._beam_search) for one [SEP] token: each
// step keeps the 2·K best continuations of the K running beams; those that end ([SEP] or
// max_length) among the first K become finished candidates with length-normalised scores, the
// best K that do not end run on.
at::Tensor beam_search(models::BlipForConditionalGeneration& model, const at::Tensor& image,
                       const at::Tensor& prompt, const BlipDecoding& d) {
  const auto& c = model->config;
  const int64_t B = prompt.size(0), P = prompt.size(1), K = d.num_beams, T = d.max_length;
  const int64_t keep = 2 * K, eos = c.sep_token_id;
  const auto ids = prompt.options();
  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(prompt.device());
  const models::BlipImageKeys image_k = model->image_keys(image.repeat_interleave(K, 0));
  // Unfilled positions: the pad id, or [SEP] when that is 0 (transformers' `pad or eos`).
  const int64_t fill = c.pad_token_id != 0 ? c.pad_token_id : eos;
  at::Tensor running = at::full({B, K, T}, fill, ids);
  running.narrow(2, 0, P).copy_(prompt.unsqueeze(1).expand({B, K, P}));
  at::Tensor sequences = running.clone();
  at::Tensor lengths = at::zeros({B, K}, ids);  // generated tokens of each finished sequence
  at::Tensor running_scores = at::zeros({B, K}, f32);
  running_scores.narrow(1, 1, K - 1).fill_(-1e9);
  at::Tensor scores = at::full({B, K}, -1e9, f32);
  at::Tensor finished = at::zeros({B, K}, f32.dtype(at::kBool));
  at::Tensor improvable = at::ones({B, 1}, f32.dtype(at::kBool));
  const at::Tensor first_k =
      at::cat({at::ones({K}, f32.dtype(at::kBool)), at::zeros({keep - K}, f32.dtype(at::kBool))});
  for (int64_t cur = P;; ++cur) {
    const at::Tensor flat = running.narrow(2, 0, cur).reshape({B * K, cur});
    at::Tensor logp =
        at::log_softmax(model->decode(flat, image_k).select(1, -1).to(at::kFloat), -1);
    if (cur < d.min_length) logp.select(1, eos).fill_(-INFINITY);
    const int64_t V = logp.size(1);
    logp = (logp.view({B, K, V}) + running_scores.unsqueeze(2)).view({B, K * V});
    auto [top_scores, top_index] = at::topk(logp, keep);
    const at::Tensor from = at::floor_divide(top_index, V), token = top_index.remainder(V);
    at::Tensor top_sequences = gather_beams(running, from);
    top_sequences.select(2, cur).copy_(token);
    const at::Tensor ends =
        (token == eos).logical_or(at::full_like(token, cur + 1 >= T, at::kBool));
    // The best K that go on.
    const at::Tensor go_on = top_scores + ends.to(at::kFloat) * -1e9;
    const at::Tensor next = std::get<1>(at::topk(go_on, K));
    running = gather_beams(top_sequences, next);
    running_scores = gather_beams(go_on, next);
    // The finished ones among the first K compete with those finished before.
    const at::Tensor just = ends.logical_and(first_k.unsqueeze(0));
    at::Tensor candidate =
        top_scores / std::pow(static_cast<double>(cur + 1 - P), d.length_penalty);
    const at::Tensor full =
        finished.all(-1, true).logical_and(at::full_like(improvable, d.early_stopping));
    candidate = candidate + full.to(at::kFloat) * -1e9;
    candidate = candidate + improvable.logical_not().to(at::kFloat) * -1e9;
    candidate = candidate + just.logical_not().to(at::kFloat) * -1e9;
    const at::Tensor merged_scores = at::cat({scores, candidate}, 1);
    const at::Tensor best = std::get<1>(at::topk(merged_scores, K));
    sequences = gather_beams(at::cat({sequences, top_sequences}, 1), best);
    scores = gather_beams(merged_scores, best);
    lengths = gather_beams(at::cat({lengths, at::full({B, keep}, cur + 1 - P, ids)}, 1), best);
    finished = gather_beams(at::cat({finished, just}, 1), best);
    // Can a running beam still beat the worst finished one? (early_stopping=False's heuristic:
    // the running score as if it ended now.)
    const at::Tensor best_running = running_scores.narrow(1, 0, 1) /
                                    std::pow(static_cast<double>(cur + 1 - P), d.length_penalty);
    const at::Tensor worst_finished =
        at::where(finished, std::get<0>(scores.min(1, true)), at::full_like(scores, -1e9));
    improvable = improvable.logical_and((best_running > worst_finished).any(-1, true));
    const bool open = !(finished.all().item<bool>() && d.early_stopping);
    if (!(improvable.any().item<bool>() && open && !ends.all().item<bool>())) break;
  }
  const int64_t generated = lengths.select(1, 0).max().item<int64_t>();
  return sequences.select(1, 0).narrow(1, 0, P + generated);
}

}  // namespace

at::Tensor blip_generate(models::BlipForConditionalGeneration& model,
                         const at::Tensor& pixel_values, const at::Tensor& prompt_ids,
                         const BlipDecoding& d) {
  const c10::InferenceMode inference;
  const auto& c = model->config;
  if (prompt_ids.dim() != 2 || prompt_ids.size(1) < 2)
    throw Error("prompt ids must be [B, L] with L >= 2 ([CLS] ... [SEP])");
  if (d.num_beams < 1) throw Error("num_beams must be at least 1");
  const at::Tensor image = model->encode_image(pixel_values);
  // [CLS] -> [DEC]; the trailing [SEP] goes, so that the decoder continues the prompt.
  at::Tensor ids = prompt_ids.narrow(1, 0, prompt_ids.size(1) - 1).clone();
  ids.select(1, 0).fill_(c.bos_token_id);
  if (ids.size(1) >= d.max_length) return ids;
  if (d.num_beams > 1) return beam_search(model, image, ids, d);
  at::Tensor unfinished = at::ones({ids.size(0)}, ids.options());
  const models::BlipImageKeys image_keys = model->image_keys(image);
  while (ids.size(1) < d.max_length) {
    at::Tensor logits = model->decode(ids, image_keys).select(1, -1);  // [B, vocab]
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
