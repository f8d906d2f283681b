#pragma once
// What a fine-tuning run trains on: the usable examples (instances, then DreamBooth's class
// images), their aspect-ratio buckets, the latent and text-embedding caches, the batch order, and
// next_batch(), which turns the next batch of examples into the models' inputs.
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "sdtune/data/batch_sampler.h"
#include "sdtune/data/caption_dataset.h"
#include "sdtune/data/image_transforms.h"
#include "sdtune/io/model_folder.h"
#include "sdtune/models/autoencoder_kl.h"
#include "sdtune/models/clip_text_model.h"
#include "sdtune/text/clip_tokenizer.h"
#include "sdtune/train/latent_cache.h"
#include "sdtune/train/text_embedding_cache.h"
#include "sdtune/train/trainer.h"

namespace sdtune::train {

// One micro-batch: the posterior of its images (from the VAE, or the latent cache) and its
// captions (token ids, or the cached embeddings: `context`). For SDXL also the captions' ids for
// the second tokenizer, and each image's time ids [B, 6]: its source (height, width), its crop's
// top-left corner (data::CropPlacement) and the crop's (height, width), float32.
struct Batch {
  models::DiagonalGaussian posterior;
  at::Tensor input_ids, context;
  // SDXL: the second tokenizer's ids (or, from the text cache, the pooled text_embeds beside
  // `context`) and the images' size/crop time ids.
  at::Tensor input_ids_2, text_embeds, time_ids;
};

// The frozen models that turn examples into inputs, and how they run.
struct DataEncoders {
  const text::ClipTokenizer& tokenizer;
  models::AutoencoderKL vae;
  models::CLIPTextModel text_encoder;  // used only to fill the text-embedding cache
  c10::Device device;
  at::ScalarType weight_dtype;  // of the frozen VAE and text encoder
  std::optional<at::ScalarType> autocast;
  const text::ClipTokenizer* tokenizer_2 = nullptr;  // SDXL: its batches carry ids and time ids
  models::CLIPTextModel text_encoder_2{nullptr};     // SDXL, to fill the text-embedding cache
};

// This rank's share of the cache entries to compute, and the barrier after which every rank's
// share is on disk. One process: rank 0 of 1, no barrier.
struct CacheShards {
  int64_t rank = 0, world = 1;
  std::function<void()> sync;

  // Every world-th of `all`, from the rank-th.
  template <typename T>
  std::vector<T> mine(const std::vector<T>& all) const {
    std::vector<T> out;
    for (size_t i = static_cast<size_t>(rank); i < all.size(); i += static_cast<size_t>(world))
      out.push_back(all[i]);
    return out;
  }
};

class TrainingData {
 public:
  // Opens the dataset (and the class images), decodes every image once up front (or reads or
  // computes its cached latents) and fills the caches. Reports what it found in `summary`
  // (examples, skipped files, buckets, cache hits); an Error when no usable image is left.
  // Every rank of a data-parallel run reads the whole epoch (its share of each global batch is
  // the trainer's to take); `shards` splits the caches' filling: rank r computes the missing
  // entries of examples r, r + world, ..., and all read all after `shards.sync`.
  TrainingData(const TrainOptions& options, const io::ModelFolder& base, const DataEncoders& enc,
               const CacheShards& shards, TrainSummary& summary,
               const std::function<void(const std::string&)>& say);

  // The next micro-batch, on the device. Crops and flips draw from `gen`.
  Batch next_batch(at::Generator& gen);
  // The next micro-batch of another rank: the sampler moves and `gen` draws as next_batch would,
  // but no image is read or encoded. Its posterior is zeros of the right shape and dtype (so
  // that sampling it draws what the real one would) and it has no captions.
  Batch skip_batch(at::Generator& gen);

  data::BatchSampler& sampler() { return *sampler_; }
  int64_t examples() const { return static_cast<int64_t>(examples_.size()); }

 private:
  void cache_latents(const io::ModelFolder& base, const std::vector<data::Example>& instances,
                     const std::vector<data::Example>& classes, const CacheShards& shards,
                     TrainSummary& summary, const std::function<void(const std::string&)>& say);

  const TrainOptions& o_;
  DataEncoders enc_;
  bool prior_;  // DreamBooth with prior preservation: a batch is instances, then class images
  data::TransformOptions transform_;
  // Instances first, then class images; with --cache-latents each one's posterior, with
  // --cache-text-encoder-outputs each one's caption embedding.
  std::vector<data::Example> examples_;
  std::vector<data::BucketResolution> sizes_;
  int64_t n_instance_ = 0, n_class_ = 0;
  std::vector<CachedLatents> cached_latents_;
  std::vector<CaptionEmbedding> cached_text_;
  std::optional<data::BatchSampler> sampler_;

  std::vector<int64_t> next_indices();  // the examples of the next micro-batch
};

}  // namespace sdtune::train
