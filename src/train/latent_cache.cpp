#include "sdtune/train/latent_cache.h"

#include <ATen/core/grad_mode.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>

#include "sdtune/error.h"
#include "sdtune/io/content_hash.h"
#include "sdtune/io/image.h"

namespace sdtune::train {
namespace {

// The encoded image file: a parquet row's bytes, or the file read whole.
std::shared_ptr<const std::string> encoded_image(const data::Example& ex) {
  if (ex.bytes) return ex.bytes;
  std::ifstream in(ex.image, std::ios::binary);
  if (!in)
    throw Error(std::string("cannot open image: ") + std::strerror(errno), ex.image.string());
  std::ostringstream data;
  data << in.rdbuf();
  if (in.bad()) throw Error("cannot read image", ex.image.string());
  return std::make_shared<const std::string>(std::move(data).str());
}

models::DiagonalGaussian encode_one(models::AutoencoderKL& vae, const at::Tensor& pixels) {
  const at::Tensor weight = vae->parameters().front();
  models::DiagonalGaussian d =
      vae->encode(pixels.unsqueeze(0).to(weight.device(), weight.scalar_type()));
  return {d.mean[0].cpu(), d.logvar[0].cpu()};
}

}  // namespace

std::string LatentCache::scope_of(const io::ModelFolder& base, const std::string& variant,
                                  at::ScalarType dtype, const std::string& preprocessing) {
  return io::ContentHash()
      .field("sdtune latent cache v2")  // v2: EXIF-turned images are resized before the turn
      .component(base, "vae", variant)
      .field(c10::toString(dtype))
      .field(preprocessing)
      .hex();
}

std::vector<CachedLatents> LatentCache::prepare(const std::vector<data::Example>& examples,
                                                models::AutoencoderKL vae,
                                                const data::TransformOptions& transform,
                                                std::vector<data::Example>& usable,
                                                std::vector<data::Skipped>& skipped) {
  at::NoGradGuard no_grad;
  const bool with_flipped = transform.random_flip;
  std::vector<CachedLatents> out;
  for (const data::Example& ex : examples) {
    std::shared_ptr<const std::string> bytes;
    try {
      bytes = encoded_image(ex);
    } catch (const Error& e) {
      data::skip(skipped, ex.image, e.message());
      continue;
    }
    const std::string key = io::ContentHash().field(scope_).field(*bytes).hex();
    if (auto entry = store_.get(key)) {
      const auto has = [&](const char* name) { return entry->count(name) != 0; };
      if (has("mean") && has("logvar") && has("size") &&
          (!with_flipped || (has("mean_flipped") && has("logvar_flipped")))) {
        CachedLatents c;
        c.posterior = {entry->at("mean"), entry->at("logvar")};
        if (with_flipped) c.flipped = {entry->at("mean_flipped"), entry->at("logvar_flipped")};
        c.width = entry->at("size")[0].item<int64_t>();
        c.height = entry->at("size")[1].item<int64_t>();
        out.push_back(std::move(c));
        usable.push_back(ex);
        ++hits_;
        continue;
      }
    }
    io::FittedImage image;
    try {
      image = io::read_image_fitted(
          io::ImageSource::memory(bytes->data(), bytes->size(), ex.image.string()),
          transform.max_image_pixels,
          [&](io::ImageSize source) { return data::resized_size(source, transform); });
    } catch (const Error& e) {
      data::skip(skipped, ex.image, e.message());
      continue;
    }
    CachedLatents c;
    c.width = image.source.width;
    c.height = image.source.height;
    const at::Tensor pixels = data::transform_image_unflipped(image, transform);
    c.posterior = encode_one(vae, pixels);
    std::vector<std::pair<std::string, at::Tensor>> tensors{
        {"mean", c.posterior.mean},
        {"logvar", c.posterior.logvar},
        {"size", at::tensor({c.width, c.height}, at::kLong)}};
    if (with_flipped) {
      // The mirrored image's own posterior: the VAE is not equivariant under flips.
      c.flipped = encode_one(vae, pixels.flip({2}));
      tensors.emplace_back("mean_flipped", c.flipped.mean);
      tensors.emplace_back("logvar_flipped", c.flipped.logvar);
    }
    store_.put(key, tensors);
    out.push_back(std::move(c));
    usable.push_back(ex);
    ++computed_;
  }
  return out;
}

}  // namespace sdtune::train
