#pragma once
// VAE posteriors of the training images, computed once and kept on disk (kohya's
// --cache_latents_to_disk, keyed like a build cache): the VAE encoder runs once per image instead
// of once per step, and is not needed again until validation. Each entry is the posterior
// N(mean, exp(logvar)) itself, not a sample of it, so that training still draws a fresh latent
// from it at every step, as it does without the cache.
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "sdtune/data/caption_dataset.h"
#include "sdtune/data/image_transforms.h"
#include "sdtune/io/model_folder.h"
#include "sdtune/io/tensor_cache.h"
#include "sdtune/models/autoencoder_kl.h"

namespace sdtune::train {

struct CachedLatents {
  models::DiagonalGaussian posterior;  // [4,h,w] each, CPU, in the VAE's compute dtype
  models::DiagonalGaussian flipped;    // of the mirrored image; set when random flips are on
  int64_t width = 0, height = 0;       // the source image's size (for aspect-ratio buckets)
};

class LatentCache {
 public:
  // Entries live in `dir`. `scope` names everything an entry depends on besides the image's
  // bytes: the VAE (config and weights, by content), its dtype and the preprocessing.
  LatentCache(std::filesystem::path dir, std::string scope)
      : store_(std::move(dir)), scope_(std::move(scope)) {}

  // The entry of every example, read from the cache or computed with `vae` (on its device, one
  // image at a time) and stored. Each image becomes the VAE's input as `transform` makes it,
  // deterministically (a center crop or a bucket; never a random crop), with its mirror image too
  // when it flips. An image that cannot be read or decoded is skipped with a warning and recorded
  // in `skipped`; `usable` receives the examples that have an entry, in order.
  std::vector<CachedLatents> prepare(const std::vector<data::Example>& examples,
                                     models::AutoencoderKL vae,
                                     const data::TransformOptions& transform,
                                     std::vector<data::Example>& usable,
                                     std::vector<data::Skipped>& skipped);

  int64_t hits() const { return hits_; }
  int64_t computed() const { return computed_; }
  const io::TensorCache& store() const { return store_; }

  // The scope string of a pipeline's VAE: its config.json and weight files, hashed by content,
  // the compute dtype and `preprocessing` (e.g. "center-crop 512 flip").
  static std::string scope_of(const io::ModelFolder& base, const std::string& variant,
                              at::ScalarType dtype, const std::string& preprocessing);

 private:
  io::TensorCache store_;
  std::string scope_;
  int64_t hits_ = 0, computed_ = 0;
};

}  // namespace sdtune::train
