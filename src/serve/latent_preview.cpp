#include "sdtune/serve/latent_preview.h"

#include "sdtune/error.h"

namespace sdtune::serve {

at::Tensor latent_preview(const at::Tensor& latents, bool xl) {
  if (latents.dim() != 4 || latents.size(1) != 4)
    throw Error("a latent preview needs latents [N,4,h,w]");
  // Least-squares fits of decoded RGB (in [-1, 1]) on the four latent channels, one row per
  // channel, as published with A1111's and ComfyUI's previews.
  static const float kSd[4][3] = {{0.298f, 0.207f, 0.208f},
                                  {0.187f, 0.286f, 0.173f},
                                  {-0.158f, 0.189f, 0.264f},
                                  {-0.184f, -0.271f, -0.473f}};
  static const float kXl[4][3] = {{0.3651f, 0.4232f, 0.4341f},
                                  {-0.2533f, -0.0042f, 0.1068f},
                                  {0.1076f, 0.1111f, -0.0362f},
                                  {-0.3165f, -0.2492f, -0.2188f}};
  static const float kXlBias[3] = {0.1084f, -0.0175f, -0.0011f};
  const at::Tensor factors =
      at::from_blob(const_cast<float*>(&(xl ? kXl : kSd)[0][0]), {4, 3}, at::kFloat);
  const at::Tensor x = latents[0].detach().to(at::kCPU, at::kFloat);  // [4,h,w]
  at::Tensor rgb = at::tensordot(x, factors, {0}, {0});               // [h,w,3]
  if (xl) rgb = rgb + at::from_blob(const_cast<float*>(kXlBias), {3}, at::kFloat);
  return ((rgb + 1) * 127.5).clamp(0, 255).round().to(at::kByte).contiguous();
}

}  // namespace sdtune::serve
