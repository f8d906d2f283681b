#include "sdtune/train/training_data.h"

#include <algorithm>
#include <map>

#include "sdtune/data/image_loader.h"
#include "sdtune/error.h"
#include "sdtune/train/text_embedding_cache.h"

namespace sdtune::train {
namespace fs = std::filesystem;

TrainingData::TrainingData(const TrainOptions& o, const io::ModelFolder& base,
                           const DataEncoders& enc, const CacheShards& shards,
                           TrainSummary& summary,
                           const std::function<void(const std::string&)>& say)
    : o_(o), enc_(enc), prior_(o.dreambooth.enabled && o.dreambooth.with_prior_preservation) {
  const auto& db = o.dreambooth;
  const data::Confinement confinement =
      o.allow_outside_data ? data::Confinement::Anywhere : data::Confinement::DatasetFolder;
  const data::CaptionDataset dataset =
      data::open_dataset(o.data, o.image_column, o.caption_column, confinement);
  summary.skipped = dataset.skipped();
  // DreamBooth: the instance images all carry the instance prompt; the class images (after them
  // in `examples_`) the class prompt.
  std::vector<data::Example> instance_candidates = dataset.examples(), class_candidates;
  if (db.enabled)
    for (auto& ex : instance_candidates) ex.caption = db.instance_prompt;
  if (prior_) {
    const data::CaptionDataset classes =
        data::CaptionDataset::from_folder(db.class_data, "image", "text", confinement);
    for (const auto& s : classes.skipped()) summary.skipped.push_back(s);
    class_candidates = classes.examples();
    for (auto& ex : class_candidates) ex.caption = db.class_prompt;
  }
  transform_ = {o.resolution, o.center_crop, o.random_flip, {}, o.max_image_pixels};
  if (o.enable_bucket)
    transform_.buckets = data::make_bucket_resolutions(
        o.resolution, o.resolution, o.min_bucket_reso, o.max_bucket_reso, o.bucket_reso_steps);

  // With --cache-latents: every usable example's VAE posterior, read from the cache or computed
  // now (each image decoded and encoded once); without it every image is decoded once up front,
  // so that a bad file is reported before training rather than in the middle of a batch.
  if (o.cache_latents) {
    cache_latents(base, instance_candidates, class_candidates, shards, summary, say);
  } else {
    data::usable_examples(instance_candidates, examples_, sizes_, summary.skipped,
                          o.max_image_pixels);
    summary.instance_examples = static_cast<int64_t>(examples_.size());
    data::usable_examples(class_candidates, examples_, sizes_, summary.skipped, o.max_image_pixels);
  }
  n_instance_ = summary.instance_examples;
  n_class_ = static_cast<int64_t>(examples_.size()) - n_instance_;
  summary.class_examples = n_class_;
  if (db.enabled && n_instance_ == 0)
    throw Error("no usable instance image (" + std::to_string(summary.skipped.size()) + " skipped)",
                o.data.string());
  if (prior_ && n_class_ == 0) throw Error("no usable class image", db.class_data.string());
  if (examples_.empty())
    throw Error("no usable training image (" + std::to_string(summary.skipped.size()) + " skipped)",
                o.data.string());
  summary.examples = static_cast<int64_t>(examples_.size());

  // With buckets, example i belongs to bucket bucket_of[i], and a batch never mixes buckets.
  std::vector<int64_t> bucket_of(examples_.size(), 0);
  if (o.enable_bucket) {
    const auto& buckets = transform_.buckets;
    std::map<int64_t, int64_t> counts;
    for (size_t i = 0; i < examples_.size(); ++i) {
      bucket_of[i] = data::bucket_index(sizes_[i].width, sizes_[i].height, buckets);
      ++counts[bucket_of[i]];
    }
    for (const auto& [g, n] : counts)
      summary.buckets.emplace_back(
          std::to_string(buckets[g].width) + "x" + std::to_string(buckets[g].height), n);
  }

  // With --cache-text-encoder-outputs: every caption's embedding, read or computed now.
  if (o.cache_text_encoder_outputs) {
    const fs::path cache_dir = o.cache_dir.empty() ? io::default_cache_dir() : o.cache_dir;
    TextEmbeddingCache cache(
        cache_dir / "text",
        TextEmbeddingCache::scope_of(base, o.variant, enc.weight_dtype, enc.autocast));
    std::vector<std::vector<int64_t>> ids, ids_2;
    for (const auto& ex : examples_) {
      ids.push_back(enc.tokenizer.encode_padded(ex.caption));
      if (enc.tokenizer_2) ids_2.push_back(enc.tokenizer_2->encode_padded(ex.caption));
    }
    if (shards.world > 1) {  // this rank's share first; then every rank reads all
      cache.prepare(shards.mine(ids), shards.mine(ids_2), enc.text_encoder, enc.text_encoder_2,
                    enc.autocast);
      shards.sync();
    }
    const int64_t own = cache.computed();
    cached_text_ = cache.prepare(ids, ids_2, enc.text_encoder, enc.text_encoder_2, enc.autocast);
    summary.text_cache_hits = cache.hits() - own;
    summary.text_cache_computed = cache.computed();
  }

  // With prior preservation an item is a pair (instance i mod n, class i mod m), as in diffusers'
  // DreamBooth dataset: an epoch is max(n, m) pairs, and a batch of B items is 2B images.
  const int64_t instance_items = n_instance_ * (db.enabled ? db.repeats : 1);
  const std::vector<int64_t> item_groups =
      prior_ ? std::vector<int64_t>(std::max(instance_items, n_class_), 0)
             : (instance_items > n_instance_ ? std::vector<int64_t>(instance_items, 0) : bucket_of);
  sampler_.emplace(item_groups, o.batch_size, o.seed);
}

void TrainingData::cache_latents(const io::ModelFolder& base,
                                 const std::vector<data::Example>& instances,
                                 const std::vector<data::Example>& classes,
                                 const CacheShards& shards, TrainSummary& summary,
                                 const std::function<void(const std::string&)>& say) {
  // The scope names the deterministic preprocessing, so that other crops never share entries.
  std::string preprocessing = o_.enable_bucket ? "buckets " + std::to_string(o_.resolution) + " " +
                                                     std::to_string(o_.min_bucket_reso) + "-" +
                                                     std::to_string(o_.max_bucket_reso) + "/" +
                                                     std::to_string(o_.bucket_reso_steps)
                                               : "center-crop " + std::to_string(o_.resolution);
  if (o_.random_flip) preprocessing += " flip";
  const fs::path cache_dir = o_.cache_dir.empty() ? io::default_cache_dir() : o_.cache_dir;
  LatentCache cache(cache_dir / "latents",
                    LatentCache::scope_of(base, o_.variant, enc_.weight_dtype, preprocessing));
  say("caching latents in " + (cache_dir / "latents").string());
  if (shards.world > 1) {
    // This rank's share of the entries first (a bad image is reported in the pass below); then
    // every rank reads all of them.
    std::vector<data::Example> unused;
    std::vector<data::Skipped> reported_below;
    for (const auto* list : {&instances, &classes})
      cache.prepare(shards.mine(*list), enc_.vae, transform_, unused, reported_below);
    shards.sync();
  }
  const int64_t own = cache.computed();
  for (const auto* list : {&instances, &classes}) {
    for (auto& c : cache.prepare(*list, enc_.vae, transform_, examples_, summary.skipped))
      cached_latents_.push_back(std::move(c));
    if (list == &instances) summary.instance_examples = static_cast<int64_t>(examples_.size());
  }
  for (const auto& c : cached_latents_) sizes_.push_back({c.width, c.height});
  summary.latent_cache_hits = cache.hits() - own;  // the entries this rank did not compute
  summary.latent_cache_computed = cache.computed();
}

std::vector<int64_t> TrainingData::next_indices() {
  const std::vector<int64_t> items = sampler_->next();
  // The examples of the items: with prior preservation the instances first, then their class
  // images (diffusers' collate_fn), so that the loss can split the batch in halves.
  // Item i is instance i mod n (the identity without repeats or class images).
  std::vector<int64_t> indices;
  for (int64_t i : items) indices.push_back(i % n_instance_);
  if (prior_)
    for (int64_t i : items) indices.push_back(n_instance_ + i % n_class_);
  return indices;
}

Batch TrainingData::next_batch(at::Generator& gen) {
  std::vector<at::Tensor> pixels, means, logvars, ids, ids_2, contexts, pooled;
  std::vector<float> time_ids;
  for (int64_t i : next_indices()) {
    const data::Example& ex = examples_[i];
    data::CropPlacement placement;
    if (o_.cache_latents) {
      // The flip is drawn as for an uncached image, so that both runs see the same data.
      const bool flipped = data::draw_flip(transform_, gen);
      const auto& d = flipped ? cached_latents_[i].flipped : cached_latents_[i].posterior;
      means.push_back(d.mean);
      logvars.push_back(d.logvar);
      placement = data::fixed_crop_placement({cached_latents_[i].width, cached_latents_[i].height},
                                             transform_, flipped);
    } else {
      std::vector<data::Skipped> unreadable;
      auto image = data::load_training_image(ex, transform_, gen, unreadable, &placement);
      if (!image)
        throw Error("training image became unreadable during training", ex.image.string());
      pixels.push_back(*image);
    }
    if (o_.cache_text_encoder_outputs) {
      contexts.push_back(cached_text_[i].context);
      if (enc_.tokenizer_2) pooled.push_back(cached_text_[i].pooled);
    } else {
      ids.push_back(at::tensor(enc_.tokenizer.encode_padded(ex.caption), at::kLong));
      if (enc_.tokenizer_2)
        ids_2.push_back(at::tensor(enc_.tokenizer_2->encode_padded(ex.caption), at::kLong));
    }
    if (enc_.tokenizer_2) {
      // SDXL's micro-conditioning: (original h, w, crop top, left, target h, w).
      for (const int64_t v : {placement.source.height, placement.source.width, placement.top,
                              placement.left, placement.crop.height, placement.crop.width})
        time_ids.push_back(static_cast<float>(v));
    }
  }
  Batch b;
  if (o_.cache_latents) {
    b.posterior = {at::stack(means).to(enc_.device), at::stack(logvars).to(enc_.device)};
  } else {
    at::NoGradGuard no_grad;
    b.posterior = enc_.vae->encode(at::stack(pixels).to(enc_.device, enc_.weight_dtype));
    // skip_batch assumes this dtype for the posteriors it does not compute.
    if (b.posterior.mean.scalar_type() != enc_.weight_dtype)
      throw Error("internal: the VAE's posterior is not in the VAE's dtype");
  }
  if (o_.cache_text_encoder_outputs) {
    b.context = at::stack(contexts).to(enc_.device);
    if (enc_.tokenizer_2) b.text_embeds = at::stack(pooled).to(enc_.device);
  } else {
    b.input_ids = at::stack(ids).to(enc_.device);
    if (enc_.tokenizer_2) b.input_ids_2 = at::stack(ids_2).to(enc_.device);
  }
  if (enc_.tokenizer_2) b.time_ids = at::tensor(time_ids).view({-1, 6}).to(enc_.device);
  return b;
}

Batch TrainingData::skip_batch(at::Generator& gen) {
  std::vector<int64_t> shape;  // of one example's latent (a batch never mixes sizes)
  at::ScalarType dtype = enc_.weight_dtype;
  const std::vector<int64_t> indices = next_indices();
  for (int64_t i : indices) {
    if (o_.cache_latents) {
      data::draw_flip(transform_, gen);
      const at::Tensor& mean = cached_latents_[i].posterior.mean;
      shape = mean.sizes().vec();
      dtype = mean.scalar_type();
    } else {
      const io::ImageSize size =
          data::draw_transform({sizes_[i].width, sizes_[i].height}, transform_, gen);
      // The VAE halves the size at each down block but the last.
      const auto& vae = enc_.vae->config.vae;
      const int64_t factor = int64_t{1} << (vae.block_out_channels.size() - 1);
      shape = {vae.latent_channels, size.height / factor, size.width / factor};
    }
  }
  shape.insert(shape.begin(), static_cast<int64_t>(indices.size()));
  const at::Tensor zeros =
      at::zeros({1}, at::TensorOptions().dtype(dtype).device(enc_.device)).expand(shape);
  Batch b;
  b.posterior = {zeros, zeros};
  return b;
}

}  // namespace sdtune::train
