#pragma once
// A cheap look at a generation in progress: the latents mapped to RGB by a fixed linear map of
// their four channels (the "approx cheap" preview of A1111 and ComfyUI), at the latents' own
// resolution (1/8 of the image's). No VAE runs, so it costs next to nothing per step.
#include <ATen/ATen.h>

namespace sdtune::serve {

// The first image of latents [N,4,h,w] as uint8 [h,w,3] (CPU). `xl`: SDXL's latent space, whose
// channels map to colours differently from SD 1.x/2.x's.
at::Tensor latent_preview(const at::Tensor& latents, bool xl);

}  // namespace sdtune::serve
